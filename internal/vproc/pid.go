// Package vproc is the single process space of an SMP cluster: the seed's
// "vproc layer". Since every OSlet shares the cluster's one PID namespace, a
// process has one PID everywhere, and the kernel itself signals, waits for
// and lists processes across OSlets. What the kernel does not know is kept
// here: the exit statuses of the processes an OSlet's init started (kept for
// late waiters), and the launch policies. It knows nothing of the transport,
// so the same table serves whatever carries the fabric's messages.
package vproc

import (
	"fmt"
	"strconv"
)

// PID is a process ID in the cluster's PID namespace: the same number in
// every OSlet. The host sees the same processes under other numbers (its own
// PID namespace is the cluster's parent); smpc on the host speaks in the
// cluster's numbers.
type PID int32

// String formats p as the decimal integer that kill(1) would take.
func (p PID) String() string { return strconv.Itoa(int(p)) }

// ParsePID parses a PID written in decimal.
func ParsePID(s string) (PID, error) {
	n, err := strconv.ParseInt(s, 10, 32)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("invalid pid %q: want a positive integer", s)
	}
	return PID(n), nil
}

// MaxOSlet is the largest OSlet index a plan may use.
const MaxOSlet = 1024
