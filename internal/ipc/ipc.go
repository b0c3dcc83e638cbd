// Package ipc is the cluster's System V IPC: message queues, semaphore sets
// and shared memory segments whose keys mean the same object on every
// OSlet. A segment's pages are a memfd of their own that the home hands out
// beside the object's memory; processes map them and need nothing more.
//
// The seed stripes IPC objects over the OSlets and sends operations to the
// home of each. Sending every msgsnd or semop through the home's proxy would
// cost a round trip between OSlets per operation, far from the native cost,
// so smpc splits the work the way futexes split a mutex:
//
//   - The home OSlet (chosen by hashing the key) creates each object as a
//     memfd, checks permissions with the caller's kernel credentials, and
//     hands the descriptor to every process that gets the object, on any
//     OSlet. That is the slow path: get, IPC_SET, IPC_RMID, listing, and
//     clean-up when a process ends (SEM_UNDO, waiters it left).
//   - Every process maps the same pages and runs msgsnd, msgrcv and semop
//     itself, under a futex mutex in the shared page, sleeping on a futex
//     when it must block. That is the fast path: no message to any OSlet.
//
// A Segment is one object's shared memory and the operations on it; a
// Registry is a home's table of the objects it holds.
package ipc

import (
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"time"
)

// Kind says what an object is.
type Kind uint32

// The kinds.
const (
	KindMsg Kind = 1 // message queue
	KindSem Kind = 2 // semaphore set
	KindShm Kind = 3 // shared memory segment
)

// kinds lists every kind, in ipcs(1)'s order of sections.
var kinds = []Kind{KindMsg, KindShm, KindSem}

func (k Kind) String() string {
	switch k {
	case KindMsg:
		return "msg"
	case KindSem:
		return "sem"
	case KindShm:
		return "shm"
	}
	return fmt.Sprintf("kind(%d)", uint32(k))
}

// MarshalText writes the kind by name, for messages and JSON.
func (k Kind) MarshalText() ([]byte, error) {
	if !k.valid() {
		return nil, fmt.Errorf("unknown IPC kind %d", uint32(k))
	}
	return []byte(k.String()), nil
}

// UnmarshalText reads a kind's name.
func (k *Kind) UnmarshalText(b []byte) error {
	v, err := ParseKind(string(b))
	*k = v
	return err
}

func (k Kind) valid() bool { return k == KindMsg || k == KindSem || k == KindShm }

// ParseKind reads a kind's name.
func ParseKind(s string) (Kind, error) {
	for _, k := range kinds {
		if s == k.String() {
			return k, nil
		}
	}
	return 0, fmt.Errorf("unknown IPC kind %q (msg, shm or sem)", s)
}

// Flags, with Linux's values, so that programs pass what they would pass to
// msgget, msgsnd, msgrcv and semop.
const (
	Private  = 0       // IPC_PRIVATE: a key that always makes a new object
	Create   = 0o1000  // IPC_CREAT
	Excl     = 0o2000  // IPC_EXCL
	NoWait   = 0o4000  // IPC_NOWAIT
	NoError  = 0o10000 // MSG_NOERROR: truncate a long message
	Except   = 0o20000 // MSG_EXCEPT: receive the first message not of the type
	Undo     = 0x1000  // SEM_UNDO
	permBits = 0o777
)

// Linux's default limits (msgmax, msgmnb, semmsl, semopm, semvmx).
const (
	MsgMax        = 8192  // largest message text
	MsgQBytes     = 16384 // default byte limit of a queue
	MaxQBytes     = 1 << 20
	SemMax        = 32000 // semaphores in a set
	SemOpMax      = 500   // operations in one semop
	SemValueMax   = 32767 // largest semaphore value
	sessionsPerID = 1024  // processes attached to one object at once
)

// IDBits is how many low bits of an ID number the object within its home;
// the rest name the home, as in a global PID.
const IDBits = 22

// MakeID makes an object ID from its home and its serial there.
func MakeID(home int, serial int32) int32 { return int32(home)<<IDBits | serial }

// HomeOfID returns the OSlet that holds object id.
func HomeOfID(id int32) int { return int(id >> IDBits) }

// HomeOfKey chooses the home of a key among the cluster's OSlets: the seed's
// "stripe everything", so that no OSlet holds every object.
func HomeOfKey(key int32, oslets []int) int {
	h := fnv.New32a()
	h.Write([]byte{byte(key), byte(key >> 8), byte(key >> 16), byte(key >> 24)})
	return oslets[h.Sum32()%uint32(len(oslets))]
}

// ParseKey reads a key in decimal or 0x hex, as ipcs(1) prints them.
func ParseKey(s string) (int32, error) {
	v, err := strconv.ParseInt(s, 0, 64)
	if err != nil || v < -1<<31 || v > 1<<32-1 {
		return 0, fmt.Errorf("bad IPC key %q (decimal or 0x hex, 32 bits)", s)
	}
	return int32(uint32(v)), nil
}

// FormatKey prints a key as ipcs(1) does.
func FormatKey(key int32) string { return fmt.Sprintf("0x%08x", uint32(key)) }

// Cred is who is asking, from the kernel.
type Cred struct {
	UID    uint32   `json:"uid"`
	GID    uint32   `json:"gid"`
	Groups []uint32 `json:"groups,omitempty"`
	PID    int32    `json:"pid,omitempty"` // global PID, recorded as the last sender or operator
}

func (c Cred) inGroup(gid uint32) bool {
	if c.GID == gid {
		return true
	}
	for _, g := range c.Groups {
		if g == gid {
			return true
		}
	}
	return false
}

// Access bits, as ipcperms(9) tests them.
const (
	AccessRead  = 4
	AccessWrite = 2
)

// Perm is an object's owner and mode.
type Perm struct {
	UID  uint32 `json:"uid"`
	GID  uint32 `json:"gid"`
	CUID uint32 `json:"cuid"`
	CGID uint32 `json:"cgid"`
	Mode uint32 `json:"mode"`
}

// Allows applies ipcperms: root may do anything; otherwise the owner's (or
// creator's), the group's or the others' bits must grant every bit of want.
func (p Perm) Allows(c Cred, want uint32) bool {
	if c.UID == 0 {
		return true
	}
	var granted uint32
	switch {
	case c.UID == p.UID || c.UID == p.CUID:
		granted = p.Mode >> 6
	case c.inGroup(p.GID) || c.inGroup(p.CGID):
		granted = p.Mode >> 3
	default:
		granted = p.Mode
	}
	return granted&want == want
}

// Controls says whether c may IPC_SET or IPC_RMID: root, owner or creator.
func (p Perm) Controls(c Cred) bool { return c.UID == 0 || c.UID == p.UID || c.UID == p.CUID }

// Info describes an object, as IPC_STAT and ipcs(1) do.
type Info struct {
	Kind  Kind  `json:"kind"`
	ID    int32 `json:"id"`
	Key   int32 `json:"key"`
	Home  int   `json:"home"`
	Perm  `json:"perm"`
	CTime int64 `json:"ctime"` // last change (create, IPC_SET, SETVAL)
	// Message queues.
	QBytes   uint64 `json:"qbytes,omitempty"`   // byte limit
	CBytes   uint64 `json:"cbytes,omitempty"`   // bytes queued
	QNum     uint64 `json:"qnum,omitempty"`     // messages queued
	LSPID    int32  `json:"lspid,omitempty"`    // last sender (last semop for sets)
	LRPID    int32  `json:"lrpid,omitempty"`    // last receiver
	STime    int64  `json:"stime,omitempty"`    // last msgsnd or semop
	RTime    int64  `json:"rtime,omitempty"`    // last msgrcv
	NSems    int    `json:"nsems,omitempty"`    // semaphore sets
	Size     int64  `json:"size,omitempty"`     // shared memory segments: bytes
	Attached int    `json:"attached,omitempty"` // processes holding the object now
}

// ModeString prints permission bits as ipcs(1) does ("644").
func ModeString(mode uint32) string { return strconv.FormatUint(uint64(mode&permBits), 8) }

func now() int64 { return time.Now().Unix() }

// ParseSemOp reads "NUM:DELTA" (smpc sem op's argument).
func ParseSemOp(s string) (num uint16, delta int16, err error) {
	a, b, ok := strings.Cut(s, ":")
	n, err1 := strconv.ParseUint(a, 10, 16)
	d, err2 := strconv.ParseInt(b, 10, 16)
	if !ok || err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("bad semaphore operation %q (NUM:DELTA, such as 0:-1)", s)
	}
	return uint16(n), int16(d), nil
}
