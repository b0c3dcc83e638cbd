package vproc

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// ExitStatus is how a process ended, as wait(2) reports it.
type ExitStatus struct {
	// Code is the exit code when the process exited normally.
	Code int `json:"code"`
	// Signal is the signal that killed the process, or 0.
	Signal int `json:"signal,omitempty"`
	// CoreDumped reports whether the kill dumped core.
	CoreDumped bool `json:"core,omitempty"`
	// Lost reports that the process's OSlet went down: like a failed board,
	// everything on it was killed (Signal is SIGKILL).
	Lost bool `json:"lost,omitempty"`
	// Unknown reports that the process was not a child of its OSlet's init,
	// so its status went to its own parent and is not known here.
	Unknown bool `json:"unknown,omitempty"`
}

// StatusFromWait converts a wait status from wait4(2).
func StatusFromWait(ws unix.WaitStatus) ExitStatus {
	if ws.Signaled() {
		return ExitStatus{Signal: int(ws.Signal()), CoreDumped: ws.CoreDump()}
	}
	return ExitStatus{Code: ws.ExitStatus()}
}

// LostStatus is the status of a process whose OSlet died.
func LostStatus() ExitStatus { return ExitStatus{Signal: int(unix.SIGKILL), Lost: true} }

// ShellCode is the status a shell would report: the exit code, or 128 plus
// the number of the signal that killed the process.
func (s ExitStatus) ShellCode() int {
	if s.Signal != 0 {
		return 128 + s.Signal
	}
	return s.Code
}

// String describes the status as a person would read it.
func (s ExitStatus) String() string {
	switch {
	case s.Unknown:
		return "exited (status went to its parent)"
	case s.Lost:
		return "killed by SIGKILL (its oslet went down)"
	case s.Signal != 0:
		msg := fmt.Sprintf("killed by %s", SignalName(unix.Signal(s.Signal)))
		if s.CoreDumped {
			msg += " (core dumped)"
		}
		return msg
	default:
		return fmt.Sprintf("exited with status %d", s.Code)
	}
}
