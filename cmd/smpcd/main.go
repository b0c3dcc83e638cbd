// Command smpcd is the boot firmware of an SMP cluster: it boots and stops
// clusters, and is the binary of each cluster's PID 1 and of each OSlet's
// init. Users run it through smpc boot and smpc shutdown, which execute it;
// it also takes every command smpc takes.
package main

import (
	"os"
	"runtime"

	"github.com/smpc-cluster/smpc/internal/smpcd"
)

// The main goroutine keeps the main thread for itself. An init moves one
// thread of its own into its OSlet's processes' cgroup to fork from (see
// package oslet's spawner), and that must never be the main thread, whose
// cgroup the kernel charges the whole process's memory to.
func init() { runtime.LockOSThread() }

func main() { os.Exit(smpcd.Run(os.Args[1:])) }
