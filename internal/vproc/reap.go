package vproc

import (
	"errors"
	"os"
	"os/signal"

	"golang.org/x/sys/unix"
)

// ReapForever reaps the caller's children as they end, for ever: the work of
// a PID 1 or a subreaper, to which the kernel hands orphans. ended, if not
// nil, hears of each child that exited or was killed.
func ReapForever(ended func(pid PID, ws unix.WaitStatus)) {
	sigchld := make(chan os.Signal, 16)
	signal.Notify(sigchld, unix.SIGCHLD)
	for {
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if pid <= 0 {
				break
			}
			if ended != nil && (ws.Exited() || ws.Signaled()) {
				ended(PID(pid), ws)
			}
		}
		<-sigchld
	}
}
