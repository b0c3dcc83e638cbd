package vproc

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ParseSignal accepts a signal as kill(1) does: a number, a name with or
// without the SIG prefix, in any case, or a real-time signal as RTMIN+n or
// RTMAX-n.
func ParseSignal(s string) (unix.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 0 || n > sigRTMax {
			return 0, fmt.Errorf("unknown signal %q: numbers run from 0 to %d", s, sigRTMax)
		}
		return unix.Signal(n), nil
	}
	name := strings.TrimPrefix(strings.ToUpper(s), "SIG")
	if sig := unix.SignalNum("SIG" + name); sig != 0 {
		return sig, nil
	}
	for _, rt := range []struct {
		prefix string
		base   int
		dir    int
	}{{"RTMIN+", sigRTMin, 1}, {"RTMAX-", sigRTMax, -1}} {
		if off, ok := strings.CutPrefix(name, rt.prefix); ok {
			if n, err := strconv.Atoi(off); err == nil && n >= 0 && n <= sigRTMax-sigRTMin {
				return unix.Signal(rt.base + rt.dir*n), nil
			}
		}
	}
	switch name {
	case "RTMIN":
		return unix.Signal(sigRTMin), nil
	case "RTMAX":
		return unix.Signal(sigRTMax), nil
	}
	return 0, fmt.Errorf("unknown signal %q (try 'smpc kill -l')", s)
}

// Linux's real-time signal range as glibc exposes it to programs.
const (
	sigRTMin = 34
	sigRTMax = 64
)

// SignalName returns the SIG-prefixed name of sig, or its number.
func SignalName(sig unix.Signal) string {
	if name := unix.SignalName(sig); name != "" {
		return name
	}
	return strconv.Itoa(int(sig))
}

// SignalNames lists the names of signals 1 to 31, as kill -l prints them.
func SignalNames() []string {
	var names []string
	for i := 1; i < 32; i++ {
		if n := unix.SignalName(unix.Signal(i)); n != "" {
			names = append(names, fmt.Sprintf("%2d) %s", i, n))
		}
	}
	return names
}
