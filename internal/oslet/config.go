// Package oslet is an OSlet's init: the first process of the OSlet's own
// mount, UTS and network namespaces and of its cgroup, the subreaper of the
// processes it starts and of their orphans, the keeper of its process table,
// the placer of processes under a spreading launch policy, and its proxy to
// the other OSlets. Every init lives in the cluster's one PID and IPC
// namespaces, so a process's PID and a SysV key mean the same on every
// OSlet, and the kernel itself signals and waits across OSlets.
//
// It serves three kinds of channel: its own processes (on an abstract
// socket, one per network namespace, so a process finds its own init with
// nothing to configure), the host (on a socket in the state dir, for root and
// the booting user), and its peers (one proxy channel for each ordered pair
// of OSlets).
//
// Lock order: Init.mu before Table's mutex; no lock is held across a call to
// a peer. A request that arrived from a peer never calls another peer, so
// peers cannot deadlock on each other's queued locks.
package oslet

import (
	"github.com/smpc-cluster/smpc/internal/device"
	"github.com/smpc-cluster/smpc/internal/partition"
	"github.com/smpc-cluster/smpc/internal/plan"
)

// Config is what the boot firmware hands an init.
type Config struct {
	Index    int                 `json:"index"`
	Cluster  string              `json:"cluster"` // hostname of every OSlet
	StateDir string              `json:"state_dir"`
	Plan     *plan.Plan          `json:"plan"`   // the boot table
	Cgroup   partition.StatFiles `json:"cgroup"` // where the init reads its cgroup's use
	// Cgroups are every OSlet's cgroup files: a process placed on OSlet K
	// moves into Cgroups[K].
	Cgroups map[int]partition.StatFiles `json:"cgroups"`
	// Bin is the directory that holds smpc, added to the PATH of the
	// processes the init starts where smpc is not on it.
	Bin      string          `json:"bin,omitempty"`
	GTmp     string          `json:"gtmp"`               // host path of the shared tmpfs mounted on /gtmp
	Shm      string          `json:"shm"`                // host path of the shared tmpfs mounted on /dev/shm
	Owner    uint32          `json:"owner"`              // uid allowed on the host socket besides root
	Address  string          `json:"address,omitempty"`  // the OSlet's address on the cluster bridge
	Address6 string          `json:"address6,omitempty"` // its IPv6 address there, if the cluster has IPv6
	Hosts    string          `json:"hosts,omitempty"`    // host path of the /etc/hosts the OSlet sees
	Devices  []device.Device `json:"devices,omitempty"`  // every OSlet's devices
	// PeerSlots bounds the peer requests served at once (the queued lock).
	PeerSlots int `json:"peer_slots"`
}

// Sync messages between the boot firmware and an init, one JSON object a
// line on the socket pair the init inherits as fd 3:
//
//	boot                     init
//	 | ---- Config ----------> |  mounts, hostname, loopback, sockets
//	 | <--- {listening} ------ |
//	 |  (every init listens)   |
//	 | ---- {start} ---------> |  dial every peer
//	 | <--- {ready} ---------- |
//
// Any step may answer {error} instead; the boot then tears everything down.
type syncMsg struct {
	Step  string `json:"step"`
	Error string `json:"error,omitempty"`
}

// The sync steps.
const (
	StepListening = "listening"
	StepStart     = "start"
	StepReady     = "ready"
)
