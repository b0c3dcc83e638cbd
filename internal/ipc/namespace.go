package ipc

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// Namespace runs System V calls in the cluster's IPC namespace. Inside an
// OSlet every process is already there, and a nil Namespace calls directly.
// On the host, the calls run on one thread of the Namespace's own that
// setns(2) moved into the cluster's namespace: an IPC namespace belongs to a
// thread, so the rest of the process stays the host's.
//
// One thread, kept, and not one per call: entering an IPC namespace detaches
// the thread from its process's SEM_UNDO list, so a thread's semops with
// SEM_UNDO keep their adjustments in a list of that thread's own, which the
// kernel applies when the thread lets go of it. The Namespace's thread lets
// go on Close (or exits with the process), which is when a host program's
// undo adjustments apply. Its calls run one at a time; a program that blocks in
// one call while making another uses a Namespace for each.
type Namespace struct {
	file *os.File

	once  sync.Once
	calls chan func()
	err   error // from entering the namespace

	closeOnce sync.Once
	quit      chan struct{}
}

// OpenNamespace opens the IPC namespace of host process pid (the cluster's
// PID 1).
func OpenNamespace(pid int) (*Namespace, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/ns/ipc", pid))
	if err != nil {
		return nil, fmt.Errorf("open the cluster's IPC namespace: %w", err)
	}
	return &Namespace{file: f, calls: make(chan func()), quit: make(chan struct{})}, nil
}

// errClosed says the Namespace was closed.
var errClosed = errors.New("the cluster's IPC namespace is closed")

// Do runs f in the namespace and returns its error.
func (n *Namespace) Do(f func() error) error {
	if n == nil {
		return f()
	}
	n.once.Do(n.start)
	if n.err != nil {
		return n.err
	}
	done := make(chan error, 1)
	select {
	case n.calls <- func() { done <- f() }:
	case <-n.quit:
		return errClosed
	}
	return <-done
}

// start enters the namespace on a thread of its own, which then runs the
// calls until Close.
func (n *Namespace) start() {
	entered := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		if err := unix.Setns(int(n.file.Fd()), unix.CLONE_NEWIPC); err != nil {
			entered <- fmt.Errorf("enter the cluster's IPC namespace: %w", err)
			return
		}
		entered <- nil
		for {
			select {
			case call := <-n.calls:
				call()
			case <-n.quit:
				// Apply this thread's SEM_UNDO adjustments now: the
				// kernel applies them when the last user of the undo
				// list lets go, which a thread that Go keeps (the main
				// thread is never ended) would never do.
				unix.Unshare(unix.CLONE_SYSVSEM)
				return
			}
		}
	}()
	n.err = <-entered
}

// Close ends the Namespace's thread once its call in progress returns,
// which applies its SEM_UNDO adjustments, and closes the namespace.
func (n *Namespace) Close() error {
	if n == nil {
		return nil
	}
	var err error
	n.closeOnce.Do(func() {
		close(n.quit)
		err = n.file.Close()
	})
	return err
}
