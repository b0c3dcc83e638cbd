package cluster

import (
	"fmt"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc/internal/partition"
	"github.com/smpc-cluster/smpc/internal/vproc"
)

// DefaultGrace is how long the processes of a cluster that is shutting
// down have between SIGTERM and SIGKILL, as a host gives its services.
const DefaultGrace = 10 * time.Second

// Killed is a process that outlived the grace period of a shutdown.
type Killed struct {
	PID     int // in the cluster
	OSlet   int
	Command string
}

// StopProcesses ends the processes of every OSlet of the cluster as a host
// ends its services at shutdown: SIGTERM to each (a database then shuts
// down cleanly), up to grace for all of them to end, then SIGKILL for those
// left, which it returns. The inits are not touched.
func (s *State) StopProcesses(grace time.Duration) ([]Killed, error) {
	files := map[int]partition.StatFiles{}
	for k, group := range s.Cgroups {
		f, err := partition.FilesOf(group)
		if err != nil {
			return nil, fmt.Errorf("shutdown: oslet %d: %w", k, err)
		}
		files[k] = f
	}
	inits := map[int]bool{}
	for _, pid := range s.Inits {
		inits[pid] = true
	}
	// The processes left, as host PIDs, by OSlet.
	left := func() map[int][]int {
		procs := map[int][]int{}
		for k, f := range files {
			for _, pid := range f.PIDs() {
				if !inits[pid] {
					procs[k] = append(procs[k], pid)
				}
			}
		}
		return procs
	}
	signalled := map[int]bool{}
	deadline := time.Now().Add(grace)
	for {
		procs := left()
		if len(procs) == 0 {
			return nil, nil
		}
		if time.Now().After(deadline) {
			return killAll(procs), nil
		}
		// Each round signals what appeared since (a child forked just
		// before its parent got the signal).
		for _, list := range procs {
			for _, pid := range list {
				if !signalled[pid] {
					unix.Kill(pid, unix.SIGTERM)
					signalled[pid] = true
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// killAll sends SIGKILL to procs (host PIDs by OSlet) and describes them.
func killAll(procs map[int][]int) []Killed {
	var killed []Killed
	for k, list := range procs {
		for _, pid := range list {
			cmd := commandOf(pid)
			clusterPID := vproc.ClusterPID(pid)
			if unix.Kill(pid, unix.SIGKILL) == nil {
				killed = append(killed, Killed{PID: clusterPID, OSlet: k, Command: cmd})
			}
		}
	}
	slices.SortFunc(killed, func(a, b Killed) int { return a.PID - b.PID })
	return killed
}

// commandOf is a process's command line, as ps shows it.
func commandOf(pid int) string {
	if c := vproc.Cmdline(pid); c != "" {
		return c
	}
	return "?"
}
