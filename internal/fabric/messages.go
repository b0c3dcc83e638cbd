package fabric

import (
	"github.com/smpc-cluster/smpc/internal/device"
	"github.com/smpc-cluster/smpc/internal/ipc"
	"github.com/smpc-cluster/smpc/internal/shm"
	"github.com/smpc-cluster/smpc/internal/vproc"
)

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
	StateDir string `json:"state_dir,omitempty"` // the cluster's state dir on the host (added in 1.2)
}

// Cred is who asked: the kernel's word (SO_PEERCRED) taken by the first init
// the request reached, and trusted from peers only.
type Cred struct {
	UID    uint32   `json:"uid"`
	GID    uint32   `json:"gid"`
	Groups []uint32 `json:"groups,omitempty"`
	PID    int32    `json:"pid,omitempty"` // global PID, or a host PID
}

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
	// Stdio indexes the frame's descriptors for fds 0, 1 and 2 (NoFile is
	// /dev/null).
	Stdio        [3]int `json:"stdio"`
	Detach       bool   `json:"detach,omitempty"`        // no remote parent; own session
	AllowSockets bool   `json:"allow_sockets,omitempty"` // override the socket rule
	// DirectDevices has the process's opens of /rdev answered with the
	// owner's descriptor (1.3); a 1.2 OSlet starts it with /rdev's files.
	DirectDevices bool  `json:"direct_devices,omitempty"`
	Cred          *Cred `json:"cred,omitempty"`   // set by the first init, never by clients
	Origin        int   `json:"origin,omitempty"` // the OSlet the request came from; 0 the host
}

// SpawnReply names the new process.
type SpawnReply struct {
	PID int32 `json:"pid"`
}

// SignalRequest delivers a signal to a process or, with Group, to a process
// group.
type SignalRequest struct {
	PID    int32 `json:"pid"`
	Group  bool  `json:"group,omitempty"`
	Signal int   `json:"signal"`
	Cred   *Cred `json:"cred,omitempty"`
}

// WaitRequest waits for a process to end.
type WaitRequest struct {
	PID  int32 `json:"pid"`
	Cred *Cred `json:"cred,omitempty"`
}

// WaitReply reports how it ended.
type WaitReply struct {
	Status vproc.ExitStatus `json:"status"`
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
}

// ProcessesReply lists processes, and the OSlets that could not answer.
type ProcessesReply struct {
	Processes []Process `json:"processes"`
	Down      []int     `json:"down,omitempty"`
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
	Protocol    string  `json:"protocol"`
	InitPID     int     `json:"init_pid,omitempty"` // host PID of the init
	Address     string  `json:"address,omitempty"`  // its address on the cluster bridge (added in 1.2)
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

// IPCGetRequest is msgget(2), semget(2) or shmget(2): by key (or IPC_PRIVATE), or with
// ID set an existing object by its ID. It goes to the object's home.
type IPCGetRequest struct {
	Kind  ipc.Kind `json:"kind"`
	Key   int32    `json:"key"`
	ID    int32    `json:"id,omitempty"`
	Flags int      `json:"flags"` // IPC_CREAT, IPC_EXCL and the mode bits
	NSems int      `json:"nsems,omitempty"`
	Size  int64    `json:"size,omitempty"` // shared memory segments
	Cred  *Cred    `json:"cred,omitempty"` // set by the first init, never by clients
	// Token names the caller's channel to its first init, which sets it;
	// its top bits name that OSlet, so a home knows whose sessions to end
	// when an OSlet dies.
	Token uint64 `json:"token,omitempty"`
}

// IPCGetReply names the object and the caller's session in it; the
// object's memory travels as the reply's descriptor, followed for a shared
// memory segment by the segment's pages (none when Slot is -1: the caller
// may neither read nor write it).
type IPCGetReply struct {
	ID   int32 `json:"id"`
	Slot int   `json:"slot"`
	Home int   `json:"home"`
}

// The IPC control commands.
const (
	IPCStat   = "stat"
	IPCSet    = "set"
	IPCRemove = "rmid"
)

// IPCCtlRequest is msgctl(2) or semctl(2) with IPC_STAT, IPC_SET or
// IPC_RMID, on the object with ID, or with ByKey on the object with Key
// (ipcrm -Q and -S). It goes to the object's home.
type IPCCtlRequest struct {
	Kind  ipc.Kind        `json:"kind"`
	Cmd   string          `json:"cmd"`
	ID    int32           `json:"id,omitempty"`
	Key   int32           `json:"key,omitempty"`
	ByKey bool            `json:"by_key,omitempty"`
	Set   *ipc.SetRequest `json:"set,omitempty"`
	Cred  *Cred           `json:"cred,omitempty"`
}

// IPCCtlReply describes the object after IPC_STAT or IPC_SET.
type IPCCtlReply struct {
	Info ipc.Info `json:"info"`
}

// IPCListRequest lists the IPC objects of the OSlet asked, or with Cluster
// of every OSlet.
type IPCListRequest struct {
	Cluster bool `json:"cluster,omitempty"`
}

// IPCListReply lists objects, and the OSlets that could not answer.
type IPCListReply struct {
	Objects []ipc.Info `json:"objects"`
	Down    []int      `json:"down,omitempty"`
}

// IPCReleaseRequest ends every session of these tokens at the home asked:
// the processes behind them are gone.
type IPCReleaseRequest struct {
	Tokens []uint64 `json:"tokens"`
}

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
	Cred   *Cred  `json:"cred,omitempty"`
}

// ShmReply lists the objects, for list; create and open answer with the
// descriptor alone.
type ShmReply struct {
	Objects []shm.Info `json:"objects"`
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
	Flags int   `json:"flags,omitempty"`
	Cred  *Cred `json:"cred,omitempty"` // set by the first init, never by clients
}

// DeviceReply lists devices; open answers with the descriptor alone.
type DeviceReply struct {
	Devices []device.Device `json:"devices,omitempty"`
}
