// Package vproc is the single process space of an SMP cluster: the seed's
// "vproc layer". It defines global PIDs, the per-OSlet process table with its
// exit statuses, and launch policies. It knows nothing of the transport, so the
// same table serves whatever carries the fabric's messages.
package vproc

import (
	"fmt"
	"strconv"
)

// LocalBits is the number of low bits of a global PID that hold the local PID.
// Linux's PID_MAX_LIMIT is 2^22 on 64-bit kernels, so every local PID fits.
const LocalBits = 22

// MaxOSlet is the largest OSlet index whose global PIDs still fit a pid_t.
const MaxOSlet = (1<<31 - 1) >> LocalBits

// PID is a global process ID. OSlet k's process with local PID p has global
// PID k<<LocalBits | p; PIDs below 1<<LocalBits keep their plain local meaning
// (on the host, a host PID).
type PID int32

// Global returns the global PID of local PID local on OSlet oslet.
func Global(oslet, local int) PID {
	return PID(oslet<<LocalBits | local)
}

// OSlet returns the index of the OSlet that owns p, or 0 when p is a plain
// local PID. It is one shift: the seed's constant-time owner lookup.
func (p PID) OSlet() int { return int(p) >> LocalBits }

// Local returns p's PID inside its OSlet's PID namespace.
func (p PID) Local() int { return int(p) & (1<<LocalBits - 1) }

// String formats p as the decimal integer that kill(1) would take.
func (p PID) String() string { return strconv.Itoa(int(p)) }

// ParsePID parses a global PID written in decimal.
func ParsePID(s string) (PID, error) {
	n, err := strconv.ParseInt(s, 10, 32)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("invalid pid %q: want a positive integer", s)
	}
	p := PID(n)
	if p.OSlet() == 0 {
		return 0, fmt.Errorf("pid %d belongs to no OSlet: global PIDs are k*%d+p for OSlet k", n, 1<<LocalBits)
	}
	if p.Local() == 0 {
		return 0, fmt.Errorf("invalid pid %d: local PID 0 does not exist", n)
	}
	return p, nil
}
