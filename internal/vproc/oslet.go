package vproc

import (
	"os"
	"strconv"
	"strings"
)

// CgroupName is the last element of every OSlet's cgroup path,
// "oslet-K": a process's OSlet is the cgroup it is in.
const CgroupName = "oslet-"

// OSletOf returns the OSlet that process pid runs on, read from its cgroup
// in the caller's /proc (so pid is in the caller's PID namespace), or 0
// when it is in no OSlet's cgroup (a host process) or is gone.
func OSletOf(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return 0
	}
	return OSletOfCgroupFile(string(b))
}

// OSletOfCgroupFile finds the OSlet in the text of a /proc/PID/cgroup file:
// the first hierarchy whose path ends in an OSlet's cgroup under smpc's.
func OSletOfCgroupFile(text string) int {
	for _, line := range strings.Split(text, "\n") {
		// ID:CONTROLLERS:PATH
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 || !strings.Contains(parts[2], "/smpc/") {
			continue
		}
		path := parts[2]
		if i := strings.LastIndex(path, "/"+CgroupName); i >= 0 {
			if k, err := strconv.Atoi(path[i+len(CgroupName)+1:]); err == nil && k > 0 {
				return k
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
