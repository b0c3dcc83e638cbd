package vproc

import (
	"slices"
	"strconv"
	"strings"
)

// CgroupName begins the name of every OSlet's cgroup, "oslet-K": a
// process's OSlet is the cgroup it is in (any of its leaves).
const CgroupName = "oslet-"

// OSletOf returns the OSlet that process pid runs on, read from its cgroup
// in the caller's /proc (so pid is in the caller's PID namespace), or 0
// when it is in no OSlet's cgroup (a host process) or is gone.
func OSletOf(pid int) int {
	b, err := ReadKernelFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return 0
	}
	return OSletOfCgroupFile(string(b))
}

// OSletOfCgroupFile finds the OSlet in the text of a /proc/PID/cgroup file:
// the first hierarchy whose path names an OSlet's cgroup below a cluster's
// ("oslet-K" below an element "smpc" or "smpc-...": "/smpc/ID/oslet-K",
// "/system.slice/smpc-ID.scope/oslet-K", ".../smpc-ID/oslet-K"; then its
// init's or its processes' leaf, and whatever cgroups root made below that).
func OSletOfCgroupFile(text string) int {
	for _, line := range strings.Split(text, "\n") {
		// ID:CONTROLLERS:PATH
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		elems := strings.Split(parts[2], "/")
		first := slices.IndexFunc(elems, func(e string) bool { return e == "smpc" || strings.HasPrefix(e, "smpc-") })
		if first < 0 {
			continue
		}
		for n := len(elems) - 1; n > first; n-- {
			if rest, ok := strings.CutPrefix(elems[n], CgroupName); ok {
				if k, err := strconv.Atoi(rest); err == nil && k > 0 {
					return k
				}
			}
		}
	}
	return 0
}

// ClusterPID turns a host PID into the process's PID in the innermost PID
// namespace it lives in (the last of NSpid): for a process of the cluster,
// its cluster PID. A host process keeps its number; a process that is gone
// gives 0.
func ClusterPID(hostPID int) int {
	s, err := ReadStatus(hostPID)
	if err != nil {
		return 0
	}
	if len(s.NSpid) == 0 {
		return hostPID
	}
	return s.NSpid[len(s.NSpid)-1]
}
