// Package cluster is the seed's boot firmware: it checks the partition plan,
// makes each OSlet's cgroup, starts each OSlet's init in new namespaces,
// hands it its boot table, and supervises the OSlets until shutdown, when it
// removes everything it made.
package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/smpc-cluster/smpc/internal/network"
	"github.com/smpc-cluster/smpc/internal/plan"
)

// DefaultStateDir is where a cluster keeps its sockets and state unless told
// otherwise.
const DefaultStateDir = "/run/smpc"

// EnvStateDir names the state dir in the environment.
const EnvStateDir = "SMPC_STATE_DIR"

// State is the cluster's boot record, kept in the state dir as cluster.json:
// what the host side of smpc reads to find the OSlets, and what a later boot
// reads to clean up after a crash.
type State struct {
	Name       string          `json:"name"`
	StateDir   string          `json:"state_dir"`
	Plan       *plan.Plan      `json:"plan"`
	Supervisor int             `json:"supervisor"` // host PID of the boot process
	Reaper     int             `json:"reaper"`     // host PID of the cluster's PID 1
	Bin        string          `json:"bin"`        // the directory holding smpc for the OSlets
	Inits      map[int]int     `json:"inits"`      // OSlet index to host PID of its init
	Cgroups    map[int]string  `json:"cgroups"`
	CgroupTop  string          `json:"cgroup_top"`
	GTmp       string          `json:"gtmp"`
	Shm        string          `json:"shm"` // host path of the tmpfs every OSlet sees as /dev/shm
	Owner      uint32          `json:"owner"`
	Network    *network.Record `json:"network,omitempty"`
	Hosts      string          `json:"hosts,omitempty"` // the /etc/hosts every OSlet sees
	Booted     time.Time       `json:"booted"`
	Protocol   string          `json:"protocol"`
}

const stateFile = "cluster.json"

// PortsFile is the cluster's port map in its state dir, kept by the
// forwarder and read by smpc ports.
const PortsFile = "ports.json"

// ErrNoCluster says no cluster runs on a state dir.
var ErrNoCluster = errors.New("no cluster is running")

// ResolveStateDir applies the flag, then the environment, then the default,
// and refuses places the OSlets cannot see.
func ResolveStateDir(flag string) (string, error) {
	dir := flag
	if dir == "" {
		dir = os.Getenv(EnvStateDir)
	}
	if dir == "" {
		dir = DefaultStateDir
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("state dir %s: %w", dir, err)
	}
	for _, hidden := range []string{"/tmp", "/proc", "/gtmp"} {
		if abs == hidden || strings.HasPrefix(abs, hidden+"/") {
			return "", fmt.Errorf("state dir %s: %s is private to each OSlet, so the OSlets could not reach their sockets there; choose another (for example under /run)", abs, hidden)
		}
	}
	return abs, nil
}

// ReadState reads a running cluster's boot record.
func ReadState(stateDir string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w on state dir %s (boot one with 'smpc boot', or name another with --state-dir or %s)", ErrNoCluster, stateDir, EnvStateDir)
	}
	if err != nil {
		return nil, fmt.Errorf("read cluster state: %w", err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("read cluster state %s: %w", filepath.Join(stateDir, stateFile), err)
	}
	return &s, nil
}

func (s *State) write() error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(s.StateDir, stateFile+".new")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("write cluster state: %w", err)
	}
	return os.Rename(tmp, filepath.Join(s.StateDir, stateFile))
}
