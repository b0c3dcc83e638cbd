package oslet

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc/internal/partition"
)

// spawner forks every process the init starts so that it starts in the
// OSlet's processes' leaf, never for an instant in the init's own (where
// it would escape the OSlet's limits, and anything it forked at once would
// stay): on cgroup v1 from a thread of the init's that sits in the leaf
// itself, since a v1 thread may be in a cgroup of its own and a fork
// inherits its thread's; on v2 with CLONE_INTO_CGROUP, from any thread.
type spawner struct {
	jobs     chan func() // v1: to the thread in the leaf; nil on v2
	cgroupFD int         // v2: the leaf's directory; -1 on v1
	// devNull is the standard input, output and error of a process
	// started without them: one descriptor for every spawn, where opening
	// it through os.File took six system calls each time.
	devNull uintptr
}

// newSpawner starts the spawner for the leaf that files name.
func newSpawner(files partition.StatFiles) (*spawner, error) {
	null, err := unix.Open(os.DevNull, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", os.DevNull, err)
	}
	s := &spawner{cgroupFD: -1, devNull: uintptr(null)}
	if files.SpawnDir != "" {
		fd, err := unix.Open(files.SpawnDir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			unix.Close(null)
			return nil, fmt.Errorf("open the processes' cgroup %s: %w", files.SpawnDir, err)
		}
		s.cgroupFD = fd
		return s, nil
	}
	s.jobs = make(chan func())
	ready := make(chan error)
	go s.run(files, ready)
	if err := <-ready; err != nil {
		unix.Close(null)
		return nil, err
	}
	return s, nil
}

// run is the v1 spawner's thread: it moves itself into the leaf and forks
// there.
func (s *spawner) run(files partition.StatFiles, ready chan<- error) {
	// Never unlocked: the thread stays in the leaf and serves nothing else.
	runtime.LockOSThread()
	if unix.Gettid() == unix.Getpid() && len(files.SpawnTasks) > 0 {
		// The kernel charges the process's memory to its main thread's
		// cgroup: that one must stay in the init's (cmd/smpcd keeps it).
		ready <- errors.New("the spawning thread is the main thread (the binary must keep the main thread for main)")
		return
	}
	tid := strconv.Itoa(unix.Gettid())
	for _, tasks := range files.SpawnTasks {
		if err := os.WriteFile(tasks, []byte(tid), 0); err != nil {
			ready <- fmt.Errorf("move the spawning thread into %s: %w", tasks, err)
			return
		}
	}
	ready <- nil
	for job := range s.jobs {
		job()
	}
}

// forkExec is syscall.ForkExec, into the leaf: on v2 from the caller's
// thread, on v1 from the spawner's (handing a fork to another thread costs
// two wake-ups, some 100 µs on the development VM).
func (s *spawner) forkExec(exe string, argv []string, attr *syscall.ProcAttr) (pid int, err error) {
	if s.cgroupFD >= 0 {
		attr.Sys.UseCgroupFD, attr.Sys.CgroupFD = true, s.cgroupFD
		return syscall.ForkExec(exe, argv, attr)
	}
	done := make(chan struct{})
	s.jobs <- func() {
		pid, err = syscall.ForkExec(exe, argv, attr)
		close(done)
	}
	<-done
	return pid, err
}
