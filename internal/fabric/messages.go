package fabric

import (
	"fmt"
	"slices"
	"strconv"

	"github.com/docker/go-units"
	"golang.org/x/sys/unix"
)

// The messages own every type they carry, so that this package imports none
// of the packages that serve them: the command line links the fabric and
// none of the firmware (the packages that serve requests alias these types).

// Role says who opened a channel.
type Role string

// The roles.
const (
	RoleClient Role = "client" // a process inside the OSlet, on its own init's socket
	RoleHost   Role = "host"   // a host process (root or the booting user)
	RolePeer   Role = "peer"   // another OSlet's init: one proxy channel of the N x (N-1)
)

// Hello opens every channel; the header carries the sender's version.
type Hello struct {
	Role     Role   `json:"role"`
	From     int    `json:"from,omitempty"` // the peer's OSlet index
	PID      int32  `json:"pid,omitempty"`  // a host caller's PID, shown as a parent in ps
	Software string `json:"software,omitempty"`
}

// HelloReply accepts a channel.
type HelloReply struct {
	OSlet    int    `json:"oslet"`
	Cluster  string `json:"cluster"`
	OSlets   []int  `json:"oslets"`
	Software string `json:"software,omitempty"`
	StateDir string `json:"state_dir,omitempty"` // the cluster's state dir on the host
	InitPID  int32  `json:"init_pid"`            // the answering init's PID in the cluster
}

// Cred is who acts: a process's identity as the kernel gave it (SO_PEERCRED
// and SO_PEERGROUPS, or /proc), taken by the first init a request reached
// and trusted from peers only. One type serves every check smpc makes for a
// caller: signals, waits, shared memory, devices.
type Cred struct {
	UID    uint32   `json:"uid"`
	GID    uint32   `json:"gid"`
	Groups []uint32 `json:"groups,omitempty"`
	PID    int32    `json:"pid,omitempty"` // PID in the cluster, or a host PID
}

// Allows applies the kernel's permission check of mode bits to an object
// owned by uid and gid: root may do anything; otherwise the owner's, the
// group's or the others' bits must grant every bit of want (4 read,
// 2 write).
func (c Cred) Allows(uid, gid, mode, want uint32) bool {
	if c.UID == 0 {
		return true
	}
	switch {
	case c.UID == uid:
		mode >>= 6
	case c.GID == gid || slices.Contains(c.Groups, gid):
		mode >>= 3
	}
	return mode&want == want
}

// OnBehalf names who a request acts for, in every request that one init
// may forward to another. The first init a request reaches sets it from the
// kernel's word on its caller; an init trusts it from peers only, never
// from clients.
type OnBehalf struct {
	Cred *Cred `json:"cred,omitempty"`
}

// Behalf returns the part of a request that names who it acts for.
func (b *OnBehalf) Behalf() *OnBehalf { return b }

// NoFile marks an absent descriptor in a file index.
const NoFile = -1

// SpawnRequest creates a process.
type SpawnRequest struct {
	On     int      `json:"on,omitempty"`     // OSlet; 0 lets the policy choose
	Policy string   `json:"policy,omitempty"` // policy for placement and for the new process's descendants
	Argv   []string `json:"argv"`
	Env    []string `json:"env"`
	// Dir is the working directory's path, for messages; DirFile indexes the
	// frame's descriptor of it, so that a directory hidden by an OSlet's
	// private /tmp still works.
	Dir     string `json:"dir,omitempty"`
	DirFile int    `json:"dir_file"`
	// Fds are the descriptors the process starts with, each naming its
	// number in the process and the frame's descriptor it is; 0, 1 and 2
	// are /dev/null where absent, as every other number is closed.
	Fds          []FD `json:"fds"`
	Detach       bool `json:"detach,omitempty"`        // no remote parent; own session
	AllowSockets bool `json:"allow_sockets,omitempty"` // override the socket rule
	// DirectDevices has the process's opens of /rdev answered with the
	// owner's descriptor.
	DirectDevices bool `json:"direct_devices,omitempty"`
	Origin        int  `json:"origin,omitempty"` // the OSlet the request came from; 0 the host
	OnBehalf
}

// FD is one descriptor of a new process: number Num in the process is the
// frame's descriptor File.
type FD struct {
	Num  int `json:"num"`
	File int `json:"file"`
}

// SpawnReply names the new process and the OSlet it started on.
type SpawnReply struct {
	PID   int32 `json:"pid"`
	OSlet int   `json:"oslet,omitempty"`
}

// SignalRequest delivers a signal to a process or, with Group, to a process
// group.
type SignalRequest struct {
	PID    int32 `json:"pid"`
	Group  bool  `json:"group,omitempty"`
	Signal int   `json:"signal"`
	OnBehalf
}

// WaitRequest waits for a process to end.
type WaitRequest struct {
	PID int32 `json:"pid"`
	// On is the OSlet that started the process, when the caller knows it
	// (a Cmd does): the wait goes there at once.
	On int `json:"on,omitempty"`
	OnBehalf
}

// WaitReply reports how it ended.
type WaitReply struct {
	Status ExitStatus `json:"status"`
}

// ExitStatus is how a process ended, as wait(2) reports it.
type ExitStatus struct {
	// Code is the exit code when the process exited normally.
	Code int `json:"code"`
	// Signal is the signal that killed the process, or 0.
	Signal int `json:"signal,omitempty"`
	// CoreDumped reports whether the kill dumped core.
	CoreDumped bool `json:"core,omitempty"`
	// Lost reports that the process's OSlet went down: like a failed board,
	// everything on it was killed (Signal is SIGKILL).
	Lost bool `json:"lost,omitempty"`
	// Unknown reports that the process was not a child of its OSlet's init,
	// so its status went to its own parent and is not known here.
	Unknown bool `json:"unknown,omitempty"`
	// OOM reports that OSlet OOMOSlet's OOM killer killed the process,
	// its memory limit being MemoryLimit bytes (2.1).
	OOM         bool  `json:"oom,omitempty"`
	OOMOSlet    int   `json:"oom_oslet,omitempty"`
	MemoryLimit int64 `json:"memory_limit,omitempty"`
}

// ShellCode is the status a shell would report: the exit code, or 128 plus
// the number of the signal that killed the process.
func (s ExitStatus) ShellCode() int {
	if s.Signal != 0 {
		return 128 + s.Signal
	}
	return s.Code
}

// String describes the status as a person would read it.
func (s ExitStatus) String() string {
	switch {
	case s.Unknown:
		return "exited (status went to its parent)"
	case s.Lost:
		return "killed by SIGKILL (its oslet went down)"
	case s.OOM:
		return fmt.Sprintf("killed by the OOM killer of oslet %d (memory limit %s)", s.OOMOSlet, units.BytesSize(float64(s.MemoryLimit)))
	case s.Signal != 0:
		name := unix.SignalName(unix.Signal(s.Signal))
		if name == "" {
			name = strconv.Itoa(s.Signal)
		}
		msg := "killed by " + name
		if s.CoreDumped {
			msg += " (core dumped)"
		}
		return msg
	default:
		return fmt.Sprintf("exited with status %d", s.Code)
	}
}

// OrphanRequest says that the remote parent of these processes is gone.
type OrphanRequest struct {
	PIDs []int32 `json:"pids"`
}

// ProcessesRequest lists processes: of the OSlet asked, or with Cluster of
// every OSlet (the one asked gathers them).
type ProcessesRequest struct {
	Cluster bool `json:"cluster,omitempty"`
}

// Process is one line of smpc ps.
type Process struct {
	PID     int32   `json:"pid"`
	OSlet   int     `json:"oslet"`
	Parent  int32   `json:"ppid"`
	UID     uint32  `json:"uid"`
	User    string  `json:"user"`
	State   string  `json:"state"`
	CPUTime float64 `json:"cpu_seconds"`
	Command string  `json:"command"`
	// Policy is the launch policy the process's execs follow, where smpc
	// gave it one; Note says why a spreading policy left it where it was.
	Policy string `json:"policy,omitempty"`
	Note   string `json:"note,omitempty"`
}

// Placement is what an init knows of a process a spreading policy placed:
// the policy, and why it stayed where it was, if it did.
type Placement struct {
	PID    int32  `json:"pid"`
	Policy string `json:"policy"`
	Note   string `json:"note,omitempty"`
}

// ProcessesReply lists processes, and the OSlets that could not answer.
type ProcessesReply struct {
	Processes  []Process   `json:"processes"`
	Placements []Placement `json:"placements,omitempty"` // between inits only
	Down       []int       `json:"down,omitempty"`
}

// StatusRequest describes the OSlet asked, or with Cluster every OSlet.
type StatusRequest struct {
	Cluster bool `json:"cluster,omitempty"`
}

// OSletStatus is one line of smpc status.
type OSletStatus struct {
	Index       int     `json:"index"`
	Up          bool    `json:"up"`
	CPUs        string  `json:"cpus"`
	MemoryLimit int64   `json:"memory_limit"`
	MemoryUsed  int64   `json:"memory_used"`
	Processes   int     `json:"processes"`
	Load        float64 `json:"load"` // runnable processes per CPU
	Queue       int     `json:"queue"`
	Active      int     `json:"active"`
	Waits       int     `json:"waits,omitempty"`     // waits blocked until a process ends (2.1)
	OOMKills    int     `json:"oom_kills,omitempty"` // processes its OOM killer killed (2.1)
	Protocol    string  `json:"protocol"`
	InitPID     int     `json:"init_pid,omitempty"` // the init's PID in the cluster
	Address     string  `json:"address,omitempty"`  // its address on the cluster bridge
	Address6    string  `json:"address6,omitempty"` // its IPv6 address there; empty without IPv6, or from an init before it
}

// StatusReply describes OSlets.
type StatusReply struct {
	OSlets []OSletStatus `json:"oslets"`
}

// PingPeerRequest asks an OSlet to make Count null calls to OSlet To over
// its proxy channel and time them.
type PingPeerRequest struct {
	To    int `json:"to"`
	Count int `json:"count"`
}

// PingPeerReply gives the total time.
type PingPeerReply struct {
	Nanos int64 `json:"nanos"`
}

// Empty is the body of requests and replies that carry nothing.
type Empty struct{}

// The shared memory commands.
const (
	ShmCreate = "create"
	ShmOpen   = "open"
	ShmList   = "list"
	ShmRemove = "remove"
)

// ShmRequest creates, opens, lists or removes named shared memory. Create
// goes to the home (On, or the name's hash); open and remove to the
// object's recorded home. Create and open answer with the descriptor.
type ShmRequest struct {
	Cmd    string `json:"cmd"`
	Name   string `json:"name,omitempty"`
	Size   int64  `json:"size,omitempty"`
	On     int    `json:"on,omitempty"`
	Pinned bool   `json:"pinned,omitempty"`
	Mode   uint32 `json:"mode,omitempty"`
	Write  bool   `json:"write,omitempty"`
	OnBehalf
}

// ShmReply lists the objects, for list; create and open answer with the
// descriptor alone.
type ShmReply struct {
	Objects []ShmObject `json:"objects"`
}

// ShmObject describes one named shared memory object.
type ShmObject struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	UID    uint32 `json:"uid"`
	GID    uint32 `json:"gid"`
	Mode   uint32 `json:"mode"`
	Home   int    `json:"home"` // 0: made by a program, charged to whoever touched each page
	Pinned bool   `json:"pinned,omitempty"`
}

// The device commands.
const (
	DeviceOpen = "open" // open it and hand the descriptor over
	DeviceList = "list" // the OSlet's own devices
)

// DeviceRequest asks OSlet On, the device's owner (1.2).
type DeviceRequest struct {
	Cmd   string `json:"cmd"`
	On    int    `json:"on,omitempty"`
	Name  string `json:"name,omitempty"`
	Write bool   `json:"write,omitempty"` // open: for writing too, not read only
	// Flags are the caller's open(2) flags (1.3): the access mode, and of
	// the rest those the owner keeps (device.OpenFlags). A 1.2 owner reads
	// Write alone.
	Flags int `json:"flags,omitempty"`
	OnBehalf
}

// DeviceReply lists devices; open answers with the descriptor alone.
type DeviceReply struct {
	Devices []Device `json:"devices,omitempty"`
}

// Device is a block or character device of the cluster and the OSlet that
// owns it.
type Device struct {
	Name  string `json:"name"` // its name in /dev
	OSlet int    `json:"oslet"`
	Type  string `json:"type"` // "block" or "char"
	Major uint32 `json:"major"`
	Minor uint32 `json:"minor"`
	Mode  uint32 `json:"mode"` // permission bits
	UID   uint32 `json:"uid"`
	GID   uint32 `json:"gid"`
	Size  int64  `json:"size,omitempty"` // bytes, for a block device
}
