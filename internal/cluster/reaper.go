package cluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc/internal/vproc"
)

// ReaperCommand is the hidden smpc command that runs as the cluster's PID 1.
const ReaperCommand = "cluster-reaper"

// The cluster's namespaces are those of its reaper: one PID namespace and one
// System V IPC namespace that every OSlet shares, so that the kernel itself
// makes one process space and one SysV key space of the cluster, as
// Kerrighed's kernel patch did for its nodes. Everything else an OSlet has
// (cgroup, mounts, network, hostname) stays its own.
//
// PID 1 of that namespace is a process that only reaps: its death ends every
// process of the cluster (the kernel kills the namespace), so it must have
// no other reason to die. It never reads input, allocates per event, or
// talks to anyone.

// ReaperMain is PID 1 of the cluster's PID namespace. It reaps the orphans
// that reach it (those whose OSlet's init is gone) until it is killed.
func ReaperMain() error {
	if os.Getpid() != 1 {
		return errors.New(ReaperCommand + ": must run as PID 1 of a new PID namespace (smpc boot starts it)")
	}
	// Signals from inside the namespace never reach PID 1 without a handler;
	// SIGTERM from the host must not end the cluster either (shutdown kills
	// it with SIGKILL once every OSlet has stopped).
	signal.Ignore(unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGPIPE)
	vproc.ReapForever(nil)
	return nil
}

// startReaper starts the cluster's PID 1 in new PID and IPC namespaces.
func startReaper(exe string, log *os.File) (*exec.Cmd, error) {
	cmd := exec.Command(exe, ReaperCommand)
	cmd.Env = []string{"GOMAXPROCS=1", "GOTRACEBACK=crash"}
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: unix.CLONE_NEWPID | unix.CLONE_NEWIPC,
		Setsid:     true,
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the cluster's reaper: %w", err)
	}
	return cmd, nil
}

// Namespaces are open descriptors of the cluster's shared namespaces.
type Namespaces struct {
	PID, IPC *os.File
}

// OpenNamespaces opens the namespaces of the reaper (host PID reaper).
func OpenNamespaces(reaper int) (*Namespaces, error) {
	pidNS, err := os.Open(fmt.Sprintf("/proc/%d/ns/pid", reaper))
	if err != nil {
		return nil, fmt.Errorf("open the cluster's PID namespace: %w", err)
	}
	ipcNS, err := os.Open(fmt.Sprintf("/proc/%d/ns/ipc", reaper))
	if err != nil {
		pidNS.Close()
		return nil, fmt.Errorf("open the cluster's IPC namespace: %w", err)
	}
	return &Namespaces{PID: pidNS, IPC: ipcNS}, nil
}

// Close closes the descriptors.
func (n *Namespaces) Close() {
	n.PID.Close()
	n.IPC.Close()
}

// EnterForChildren moves the calling goroutine's thread into the cluster's
// IPC namespace and makes its children start in the cluster's PID
// namespace. The thread stays locked and dies with its goroutine: it no
// longer belongs to the host's namespaces, so no other goroutine may run on
// it. setns(2) changes only the calling thread for these two namespaces,
// which is what lets a multi-threaded Go process do it.
func (n *Namespaces) EnterForChildren() error {
	runtime.LockOSThread()
	if err := unix.Setns(int(n.PID.Fd()), unix.CLONE_NEWPID); err != nil {
		return fmt.Errorf("enter the cluster's PID namespace: %w", err)
	}
	if err := unix.Setns(int(n.IPC.Fd()), unix.CLONE_NEWIPC); err != nil {
		return fmt.Errorf("enter the cluster's IPC namespace: %w", err)
	}
	return nil
}
