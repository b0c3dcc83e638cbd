package vproc

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// CloseOnExecAbove marks every descriptor of this process above fd
// close-on-exec: those a process inherited from whoever started it, and
// those a library opened without O_CLOEXEC, must not reach the programs
// it starts, which get only what their starter hands over.
func CloseOnExecAbove(fd int) error {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("list own descriptors: %w", err)
	}
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil || n <= fd {
			continue
		}
		closeOnExec(n)
	}
	return nil
}

// closeOnExec sets FD_CLOEXEC on fd; a descriptor closed meanwhile (the
// directory listing's own) is no matter.
func closeOnExec(fd int) { unix.CloseOnExec(fd) }
