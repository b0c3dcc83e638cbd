// Package cluster is the seed's boot firmware: it checks the partition plan,
// makes each OSlet's cgroup, starts each OSlet's init in new namespaces,
// hands it its boot table, and supervises the OSlets until shutdown, when it
// removes everything it made.
package cluster

import (
	"github.com/smpc-cluster/smpc/internal/network"
	"github.com/smpc-cluster/smpc/internal/partition"
	"github.com/smpc-cluster/smpc/internal/statedir"
)

// State is the firmware's boot record in the state dir: the record the
// command line reads to find the OSlets, and the network and cgroups the boot made,
// which a later boot reads to clean up after a crash.
type State struct {
	statedir.Record
	Network *network.Record `json:"network,omitempty"`
	// Cgroup is where the cluster's cgroups are.
	Cgroup partition.Placement `json:"cgroup"`
}

// ReadState reads a running cluster's boot record.
func ReadState(stateDir string) (*State, error) {
	var s State
	if err := statedir.Read(stateDir, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

func (s *State) write() error { return statedir.Write(s.StateDir, s) }
