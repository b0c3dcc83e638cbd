// Package statedir is where a cluster lives on the host: its state dir, the
// boot record and port map kept there, and the sockets of its OSlets' inits.
// The command line reads it to find a cluster; the boot firmware (package
// cluster) writes it. It imports nothing but the plan, so that the command
// line that every make recipe may run links none of the firmware.
package statedir

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/smpc-cluster/smpc/internal/plan"
)

// Default is where a cluster keeps its sockets and state unless told
// otherwise.
const Default = "/run/smpc"

// Env names the state dir in the environment.
const Env = "SMPC_STATE_DIR"

// ClientSocket is the abstract socket on which an init serves its own
// processes. Abstract sockets belong to a network namespace, and each OSlet
// has its own, so the name is the same in every OSlet.
const ClientSocket = "@smpc-oslet"

// HostSocket returns the socket on which OSlet k serves the host and its
// peers.
func HostSocket(dir string, k int) string {
	return filepath.Join(dir, fmt.Sprintf("oslet-%d.sock", k))
}

// PortsFile is the cluster's port map in its state dir, kept by the
// forwarder and read by smpc ports.
const PortsFile = "ports.json"

// RecordFile is the boot record in the state dir.
const RecordFile = "cluster.json"

// ErrNoCluster says no cluster runs on a state dir.
var ErrNoCluster = errors.New("no cluster is running")

// Record is the cluster's boot record, kept in the state dir as
// cluster.json: what the host side of smpc reads to find the OSlets. The
// boot firmware's own record adds what it made (its network), for a later
// boot to clean up after a crash; readers here skip those fields.
type Record struct {
	Name       string         `json:"name"`
	StateDir   string         `json:"state_dir"`
	Plan       *plan.Plan     `json:"plan"`
	Supervisor int            `json:"supervisor"` // host PID of the boot process
	Reaper     int            `json:"reaper"`     // host PID of the cluster's PID 1
	Bin        string         `json:"bin"`        // the directory holding smpc for the OSlets
	Inits      map[int]int    `json:"inits"`      // OSlet index to host PID of its init
	Cgroups    map[int]string `json:"cgroups"`    // OSlet index to its absolute cgroup path
	GTmp       string         `json:"gtmp"`
	Shm        string         `json:"shm"` // host path of the tmpfs every OSlet sees as /dev/shm
	Owner      uint32         `json:"owner"`
	Hosts      string         `json:"hosts,omitempty"` // the /etc/hosts every OSlet sees
	Booted     time.Time      `json:"booted"`
	Protocol   string         `json:"protocol"`
}

// Resolve applies the flag, then the environment, then the default, and
// refuses places the OSlets cannot see.
func Resolve(flag string) (string, error) {
	dir := flag
	if dir == "" {
		dir = os.Getenv(Env)
	}
	if dir == "" {
		dir = Default
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

// Read decodes the boot record of the cluster on dir into rec: a *Record,
// or the firmware's record that embeds one.
func Read(dir string, rec any) error {
	path := filepath.Join(dir, RecordFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w on state dir %s (boot one with 'smpc boot', or name another with --state-dir or %s)", ErrNoCluster, dir, Env)
	}
	if err != nil {
		return fmt.Errorf("read cluster state: %w", err)
	}
	if err := json.Unmarshal(b, rec); err != nil {
		return fmt.Errorf("read cluster state %s: %w", path, err)
	}
	return nil
}

// ReadRecord reads the boot record of the cluster on dir.
func ReadRecord(dir string) (*Record, error) {
	var r Record
	if err := Read(dir, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Members is the part of the boot record that a client needs: the OSlets
// it may call, and the cluster's PID 1, whose IPC namespace the host's
// System V calls enter. Decoding this much and no more keeps the start of
// every smpc command short.
type Members struct {
	Reaper int `json:"reaper"`
	Plan   struct {
		OSlets []struct {
			Index int `json:"index"`
		} `json:"oslets"`
	} `json:"plan"`
}

// Indexes returns the OSlets' indexes, in the plan's order.
func (m *Members) Indexes() []int {
	var ks []int
	for _, o := range m.Plan.OSlets {
		ks = append(ks, o.Index)
	}
	return ks
}

// Write replaces the boot record on dir with rec, whole: readers see the
// old record or the new one.
func Write(dir string, rec any) error {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return fmt.Errorf("write cluster state: %w", err)
	}
	tmp := filepath.Join(dir, RecordFile+".new")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("write cluster state: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, RecordFile)); err != nil {
		return fmt.Errorf("write cluster state: %w", err)
	}
	return nil
}

// HostListener is the OSlet number the port map gives the host's own stack:
// its listeners hold cluster ports too (a forward must never steal a port
// the host serves), but nothing is forwarded to them.
const HostListener = 0

// Port is one listener in the cluster's port map.
type Port struct {
	Proto   string `json:"proto"` // tcp or udp
	Port    uint16 `json:"port"`
	OSlet   int    `json:"oslet"`   // the listener's OSlet; HostListener for the host
	PID     int64  `json:"pid"`     // its global PID (a host PID for the host); 0 if it is gone
	Command string `json:"command"` // its command name
	// Holder is who holds the cluster's port: the first to listen on it. A
	// listener whose OSlet is not the holder has the port in its own stack
	// only: a conflict.
	Holder int `json:"holder"`
	// Forwarded says that the cluster's port leads to this listener.
	Forwarded bool `json:"forwarded"`
	// The conflict rule, for a port the host and an OSlet both listen on
	// when the OSlet listened first: the host's own clients reach the
	// host's server (HostClients, on the host's listener), everyone else the
	// OSlet's (NotFromHost, on the OSlet's).
	HostClients bool `json:"host_clients,omitempty"`
	NotFromHost bool `json:"not_from_host,omitempty"`
	// Scope is ScopeLoopback for a TCP server bound to its OSlet's loopback
	// alone: the cluster's localhost reaches it, nothing outside the
	// machine does.
	Scope string `json:"scope,omitempty"`
	// Families are the address families the listener takes, "ipv4" and
	// "ipv6": a socket bound to any IPv6 address takes both, unless it is
	// IPv6-only.
	Families []string `json:"families"`
}

// ScopeLoopback is the Scope of a server bound to its OSlet's loopback.
const ScopeLoopback = "loopback"

// Conflict says whether p listens on a port another holds.
func (p Port) Conflict() bool { return p.OSlet != p.Holder }

// ReadPorts reads the port map of the cluster on dir.
func ReadPorts(dir string) ([]Port, error) {
	path := filepath.Join(dir, PortsFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read port map: %w", err)
	}
	var ports []Port
	if err := json.Unmarshal(b, &ports); err != nil {
		return nil, fmt.Errorf("read port map %s: %w", path, err)
	}
	return ports, nil
}
