// Package ipc is the cluster's System V IPC: message queues, semaphore sets
// and shared memory segments whose keys mean the same object on every
// OSlet. Every OSlet runs in the cluster's one IPC namespace, so these are
// the kernel's own objects, used at the kernel's own speed with its full
// semantics (SEM_UNDO, IPC_NOWAIT, MSG_EXCEPT, shmat), by smpc and by
// unmodified programs alike; util-linux ipcs and ipcrm see them inside any
// OSlet. The seed asked that SysV "must be made to work regardless"; on one
// kernel, sharing the namespace is how.
//
// This package holds the system calls that x/sys/unix does not wrap (msgget,
// msgsnd, msgrcv, semget, semtimedop, semctl; a C helper would need cgo for
// six calls), the listing of every object from /proc/sysvipc, and the way
// into the cluster's namespace for a caller on the host.
package ipc

import (
	"fmt"
	"strconv"
	"strings"
)

// Kind says what an object is.
type Kind uint32

// The kinds.
const (
	KindMsg Kind = 1 // message queue
	KindSem Kind = 2 // semaphore set
	KindShm Kind = 3 // shared memory segment
)

// Kinds lists every kind, in ipcs(1)'s order of sections.
var Kinds = []Kind{KindMsg, KindShm, KindSem}

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

// MarshalText writes the kind by name, for JSON.
func (k Kind) MarshalText() ([]byte, error) {
	if k != KindMsg && k != KindSem && k != KindShm {
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

// ParseKind reads a kind's name.
func ParseKind(s string) (Kind, error) {
	for _, k := range Kinds {
		if s == k.String() {
			return k, nil
		}
	}
	return 0, fmt.Errorf("unknown IPC kind %q (msg, shm or sem)", s)
}

// Flags, with Linux's values.
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

// Linux's default limits (msgmax, semmsl, semvmx), for the command line's
// checks; the kernel applies its own.
const (
	MsgMax      = 8192  // largest message text
	SemMax      = 32000 // semaphores in a set
	SemValueMax = 32767 // largest semaphore value
)

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

// ModeString prints permission bits as ipcs(1) does ("644").
func ModeString(mode uint32) string { return strconv.FormatUint(uint64(mode&permBits), 8) }

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

// Info describes an object, as ipcs(1) does.
type Info struct {
	Kind Kind   `json:"kind"`
	ID   int32  `json:"id"`
	Key  int32  `json:"key"`
	Mode uint32 `json:"mode"`
	UID  uint32 `json:"uid"` // owner
	GID  uint32 `json:"gid"`
	CUID uint32 `json:"cuid"` // creator
	CGID uint32 `json:"cgid"`
	// OSlet is where the object's creator (a segment), its last sender (a
	// queue) or its last operator (a set) runs, while that process lives;
	// 0 when it is gone or is no process of the cluster.
	OSlet int `json:"oslet,omitempty"`
	// PID is that process, as the reader's PID namespace numbers it.
	PID   int32 `json:"pid,omitempty"`
	CTime int64 `json:"ctime"`
	// Message queues.
	CBytes uint64 `json:"cbytes,omitempty"` // bytes queued
	QNum   uint64 `json:"qnum,omitempty"`   // messages queued
	LSPID  int32  `json:"lspid,omitempty"`  // last sender
	LRPID  int32  `json:"lrpid,omitempty"`  // last receiver
	// Semaphore sets.
	NSems int `json:"nsems,omitempty"`
	// Shared memory segments.
	Size     int64 `json:"size,omitempty"`
	CPID     int32 `json:"cpid,omitempty"`
	LPID     int32 `json:"lpid,omitempty"`
	Attached int   `json:"attached,omitempty"` // nattch
}
