package ipc

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Namespace runs System V calls in the cluster's IPC namespace. Inside an
// OSlet every process is already there and File is nil; on the host File
// is the namespace, and each call runs on a thread that enters it.
type Namespace struct {
	File *os.File
}

// Do runs f in the namespace. On the host it runs f on a thread of its own
// that setns(2) moved into the namespace (IPC namespaces are per thread, so
// the rest of the process stays where it is); the thread is thrown away
// afterwards, never handed back to other goroutines. A mapping that f makes
// (shmat) stays valid for the whole process.
func (n *Namespace) Do(f func() error) error {
	if n == nil || n.File == nil {
		return f()
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		if err := unix.Setns(int(n.File.Fd()), unix.CLONE_NEWIPC); err != nil {
			done <- fmt.Errorf("enter the cluster's IPC namespace: %w", err)
			return
		}
		done <- f()
	}()
	return <-done
}
