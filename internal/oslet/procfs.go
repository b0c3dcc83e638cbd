package oslet

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/smpc-cluster/smpc/internal/vproc"
)

// procStat is what /proc/PID/stat and status tell about one process.
type procStat struct {
	pid, ppid, pgrp int
	state           string
	ticks           uint64 // utime + stime
	uidReal, uidSav uint32
	comm            string
}

// clockTicks is USER_HZ, which is 100 on every Linux architecture smpc runs on.
const clockTicks = 100

// readProc reads a process's stat and its user IDs.
func readProc(pid int) (procStat, error) {
	s, err := readStat(pid)
	if err != nil {
		return procStat{}, err
	}
	status, err := vproc.ReadStatus(pid)
	if err != nil {
		return procStat{}, err
	}
	s.uidReal, s.uidSav = status.UID[0], status.UID[2]
	return s, nil
}

// readStat reads /proc/PID/stat alone: state, parent, group and CPU time,
// one read where the user IDs are not needed.
func readStat(pid int) (procStat, error) {
	b, err := vproc.ReadKernelFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	// The command name may hold spaces and parentheses: split at the last ')'.
	open, close := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || close < open {
		return procStat{}, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := strings.Fields(string(b[close+1:]))
	if len(f) < 13 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	s := procStat{pid: pid, comm: string(b[open+1 : close]), state: f[0]}
	s.ppid, _ = strconv.Atoi(f[1])
	s.pgrp, _ = strconv.Atoi(f[2])
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	s.ticks = ut + st
	return s, nil
}

func cmdline(pid int, comm string) string {
	if c := vproc.Cmdline(pid); c != "" {
		return c
	}
	return "[" + comm + "]"
}

// listPIDs returns every PID of the cluster's PID namespace.
func listPIDs() []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		if n, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, n)
		}
	}
	return pids
}

func alive(pid int) bool {
	s, err := readStat(pid)
	return err == nil && s.state != "Z" && s.state != "X"
}
