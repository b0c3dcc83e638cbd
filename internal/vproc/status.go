package vproc

import (
	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc/internal/fabric"
)

// ExitStatus is how a process ended, as the fabric carries it.
type ExitStatus = fabric.ExitStatus

// StatusFromWait converts a wait status from wait4(2).
func StatusFromWait(ws unix.WaitStatus) ExitStatus {
	if ws.Signaled() {
		return ExitStatus{Signal: int(ws.Signal()), CoreDumped: ws.CoreDump()}
	}
	return ExitStatus{Code: ws.ExitStatus()}
}

// LostStatus is the status of a process whose OSlet died.
func LostStatus() ExitStatus { return ExitStatus{Signal: int(unix.SIGKILL), Lost: true} }
