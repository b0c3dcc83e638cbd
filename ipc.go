package smpc

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc/internal/ipc"
	"github.com/smpc-cluster/smpc/internal/vproc"
)

// System V IPC flags, with Linux's values.
const (
	IPCPrivate = ipc.Private // a key that always makes a new object
	IPCCreate  = ipc.Create  // IPC_CREAT
	IPCExcl    = ipc.Excl    // IPC_EXCL
	IPCNoWait  = ipc.NoWait  // IPC_NOWAIT
	MsgNoError = ipc.NoError // MSG_NOERROR
	MsgExcept  = ipc.Except  // MSG_EXCEPT
	SemUndo    = ipc.Undo    // SEM_UNDO
)

// The cluster's System V objects are the kernel's own, in the IPC namespace
// that every OSlet shares: a key names the same object on every OSlet, and
// an unmodified program's msgget, semget and shmget find what smpc made.
// Errors are the errno values Linux's calls give, for errors.Is:
// syscall.EEXIST, ENOENT, EACCES, EPERM, EAGAIN, EIDRM, ENOMSG, E2BIG,
// EINVAL, ERANGE and ENOSPC.

// IPCKind says what an object is: a message queue, a semaphore set or a
// shared memory segment.
type IPCKind = ipc.Kind

// The IPC kinds.
const (
	KindMsg = ipc.KindMsg
	KindSem = ipc.KindSem
	KindShm = ipc.KindShm
)

// IPCInfo describes an IPC object, as ipcs(1) does, with the OSlet of its
// creator or last user.
type IPCInfo = ipc.Info

// SemOp is one operation of Op, as struct sembuf: add Delta to semaphore
// Num, block while that would go below zero, or with Delta 0 wait for zero.
type SemOp = ipc.SemOp

// ParseIPCKey reads a key in decimal or 0x hex.
func ParseIPCKey(s string) (int32, error) { return ipc.ParseKey(s) }

// sysv runs f in the cluster's IPC namespace.
func (c *Client) sysv(f func() error) error {
	if c.inside {
		return f()
	}
	c.ipcOnce.Do(func() { c.ipcNS, c.ipcErr = ipc.OpenNamespace(c.reaper) })
	if c.ipcErr != nil {
		return c.ipcErr
	}
	return c.ipcNS.Do(f)
}

// osletOf names the OSlet of a PID as the caller's /proc numbers it.
func osletOf(pid int) int { return vproc.OSletOf(pid) }

// ipcObject is what every kind of object shares: its ID.
type ipcObject struct {
	c    *Client
	kind IPCKind
	id   int32
}

// ID returns the object's identifier, as ipcs(1) shows it.
func (o *ipcObject) ID() int32 { return o.id }

// Stat describes the object, with the OSlet of its user.
func (o *ipcObject) Stat(ctx context.Context) (IPCInfo, error) { return o.stat(osletOf) }

// stat describes the object; osletOf, if not nil, names its user's OSlet.
func (o *ipcObject) stat(osletOf func(pid int) int) (info IPCInfo, err error) {
	err = o.c.sysv(func() error {
		info, err = ipc.Stat(o.kind, o.id, osletOf)
		return err
	})
	return info, err
}

// Remove is IPC_RMID: the object goes for every OSlet at once.
func (o *ipcObject) Remove(ctx context.Context) error {
	return o.wrap(o.kind.String()+"ctl IPC_RMID", o.c.sysv(func() error { return ipc.Remove(o.kind, o.id) }))
}

// Close releases nothing: the kernel holds the object until IPC_RMID, as
// it does for any process. It is there so that callers may defer it.
func (o *ipcObject) Close() error { return nil }

func (o *ipcObject) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s %s %d: %w", op, o.kind, o.id, err)
}

func (c *Client) get(kind IPCKind, key int32, get func() (int32, error)) (*ipcObject, error) {
	var id int32
	err := c.sysv(func() (err error) {
		id, err = get()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%sget key %s: %w", kind, ipc.FormatKey(key), err)
	}
	return &ipcObject{c: c, kind: kind, id: id}, nil
}

// open finds an existing object by ID.
func (c *Client) open(ctx context.Context, kind IPCKind, id int32) (*ipcObject, IPCInfo, error) {
	o := &ipcObject{c: c, kind: kind, id: id}
	info, err := o.stat(nil)
	if err != nil {
		return nil, IPCInfo{}, fmt.Errorf("open %s id %d: %w", kind, id, syscall.EINVAL)
	}
	return o, info, nil
}

// MsgQueue is a System V message queue of the cluster.
type MsgQueue struct{ *ipcObject }

// MsgGet is msgget(2).
func (c *Client) MsgGet(ctx context.Context, key int32, flags int) (*MsgQueue, error) {
	o, err := c.get(KindMsg, key, func() (int32, error) { return ipc.MsgGet(key, flags) })
	if err != nil {
		return nil, err
	}
	return &MsgQueue{o}, nil
}

// MsgOpen opens an existing queue by its ID.
func (c *Client) MsgOpen(ctx context.Context, id int32) (*MsgQueue, error) {
	o, _, err := c.open(ctx, KindMsg, id)
	if err != nil {
		return nil, err
	}
	return &MsgQueue{o}, nil
}

// Send is msgsnd(2): it blocks while the queue is full unless flags has
// IPCNoWait.
func (q *MsgQueue) Send(mtype int64, text []byte, flags int) error {
	return q.wrap("msgsnd", q.c.sysv(func() error { return ipc.MsgSend(q.id, mtype, text, flags) }))
}

// Receive is msgrcv(2): the first message of mtype (0: any; negative: the
// lowest type up to -mtype), of at most max bytes.
func (q *MsgQueue) Receive(mtype int64, max int, flags int) (gotType int64, text []byte, err error) {
	err = q.c.sysv(func() (err error) {
		gotType, text, err = ipc.MsgReceive(q.id, mtype, max, flags)
		return err
	})
	return gotType, text, q.wrap("msgrcv", err)
}

// SemSet is a System V semaphore set of the cluster.
type SemSet struct {
	*ipcObject
	nsems int
}

// SemGet is semget(2).
func (c *Client) SemGet(ctx context.Context, key int32, nsems int, flags int) (*SemSet, error) {
	o, err := c.get(KindSem, key, func() (int32, error) { return ipc.SemGet(key, nsems, flags) })
	if err != nil {
		return nil, err
	}
	info, err := o.stat(nil)
	if err != nil {
		return nil, err
	}
	return &SemSet{o, info.NSems}, nil
}

// SemOpen opens an existing set by its ID.
func (c *Client) SemOpen(ctx context.Context, id int32) (*SemSet, error) {
	o, info, err := c.open(ctx, KindSem, id)
	if err != nil {
		return nil, err
	}
	return &SemSet{o, info.NSems}, nil
}

// Op is semop(2): every operation at once, or none.
func (s *SemSet) Op(ops ...SemOp) error { return s.TimedOp(0, ops...) }

// TimedOp is semtimedop(2): Op that gives up with EAGAIN after timeout
// (0: never).
func (s *SemSet) TimedOp(timeout time.Duration, ops ...SemOp) error {
	return s.wrap("semop", s.c.sysv(func() error { return ipc.SemOps(s.id, ops, timeout) }))
}

// NSems returns the number of semaphores in the set.
func (s *SemSet) NSems() int { return s.nsems }

// GetVal is semctl GETVAL.
func (s *SemSet) GetVal(n int) (v int, err error) {
	err = s.c.sysv(func() (err error) { v, err = ipc.SemGetVal(s.id, n); return err })
	return v, s.wrap("semctl GETVAL", err)
}

// GetAll is semctl GETALL.
func (s *SemSet) GetAll() (vals []int, err error) {
	err = s.c.sysv(func() (err error) { vals, err = ipc.SemGetAll(s.id, s.nsems); return err })
	return vals, s.wrap("semctl GETALL", err)
}

// SetVal is semctl SETVAL.
func (s *SemSet) SetVal(n, v int) error {
	return s.wrap("semctl SETVAL", s.c.sysv(func() error { return ipc.SemSetVal(s.id, n, v) }))
}

// SetAll is semctl SETALL.
func (s *SemSet) SetAll(vals []int) error {
	if len(vals) != s.nsems {
		return s.wrap("semctl SETALL", fmt.Errorf("%d values for %d semaphores: %w", len(vals), s.nsems, syscall.EINVAL))
	}
	return s.wrap("semctl SETALL", s.c.sysv(func() error { return ipc.SemSetAll(s.id, vals) }))
}

// GetPID is semctl GETPID: the last process that operated on semaphore n,
// by its PID in the cluster; 0 when none has, or it is not a process of the
// cluster.
func (s *SemSet) GetPID(n int) (pid PID, err error) {
	var raw int
	err = s.c.sysv(func() (err error) { raw, err = ipc.SemGetPID(s.id, n); return err })
	if err != nil {
		return 0, s.wrap("semctl GETPID", err)
	}
	return s.c.fromOwnPID(raw), nil
}

// GetNCnt is semctl GETNCNT: how many processes wait for semaphore n to
// grow.
func (s *SemSet) GetNCnt(n int) (count int, err error) {
	err = s.c.sysv(func() (err error) { count, err = ipc.SemGetNCnt(s.id, n); return err })
	return count, s.wrap("semctl GETNCNT", err)
}

// GetZCnt is semctl GETZCNT: how many wait for it to reach zero.
func (s *SemSet) GetZCnt(n int) (count int, err error) {
	err = s.c.sysv(func() (err error) { count, err = ipc.SemGetZCnt(s.id, n); return err })
	return count, s.wrap("semctl GETZCNT", err)
}

// ShmSegment is a System V shared memory segment of the cluster.
type ShmSegment struct {
	*ipcObject
	size int64
}

// ShmGet is shmget(2).
func (c *Client) ShmGet(ctx context.Context, key int32, size int64, flags int) (*ShmSegment, error) {
	o, err := c.get(KindShm, key, func() (int32, error) {
		id, err := unix.SysvShmGet(int(key), int(size), flags)
		return int32(id), err
	})
	if err != nil {
		return nil, err
	}
	info, err := o.stat(nil)
	if err != nil {
		return nil, err
	}
	return &ShmSegment{o, info.Size}, nil
}

// Size returns the segment's size in bytes.
func (s *ShmSegment) Size() int64 { return s.size }

// Attach is shmat(2): it maps the segment for reading and, unless
// readOnly, writing.
func (s *ShmSegment) Attach(readOnly bool) (mem []byte, err error) {
	flags := 0
	if readOnly {
		flags = unix.SHM_RDONLY
	}
	err = s.c.sysv(func() (err error) { mem, err = unix.SysvShmAttach(int(s.id), 0, flags); return err })
	return mem, s.wrap("shmat", err)
}

// Detach is shmdt(2): it unmaps memory that Attach returned.
func (s *ShmSegment) Detach(mem []byte) error {
	return s.wrap("shmdt", unix.SysvShmDetach(mem))
}

// IPCs lists every message queue, shared memory segment and semaphore set of
// the cluster, as ipcs(1) does.
func (c *Client) IPCs(ctx context.Context) (objects []IPCInfo, err error) {
	err = c.sysv(func() (err error) { objects, err = ipc.List(osletOf); return err })
	for n := range objects {
		objects[n].PID = int32(c.fromOwnPID(int(objects[n].PID)))
	}
	return objects, err
}

// RemoveIPC is IPC_RMID on the object of this kind with ID id.
func (c *Client) RemoveIPC(ctx context.Context, kind IPCKind, id int32) error {
	if err := c.sysv(func() error { return ipc.Remove(kind, id) }); err != nil {
		return fmt.Errorf("remove %s id %d: %w", kind, id, err)
	}
	return nil
}

// RemoveIPCKey is IPC_RMID on the object of this kind with key, found by
// its get call with no flags, as ipcrm -Q, -S and -M do.
func (c *Client) RemoveIPCKey(ctx context.Context, kind IPCKind, key int32) error {
	if key == ipc.Private {
		return fmt.Errorf("remove %s key %s: the private key names no object: %w", kind, ipc.FormatKey(key), syscall.EINVAL)
	}
	err := c.sysv(func() error {
		var id int32
		var err error
		switch kind {
		case KindMsg:
			id, err = ipc.MsgGet(key, 0)
		case KindSem:
			id, err = ipc.SemGet(key, 0, 0)
		case KindShm:
			var n int
			n, err = unix.SysvShmGet(int(key), 0, 0)
			id = int32(n)
		default:
			err = syscall.EINVAL
		}
		if err != nil {
			return err
		}
		return ipc.Remove(kind, id)
	})
	if err != nil {
		return fmt.Errorf("remove %s key %s: %w", kind, ipc.FormatKey(key), err)
	}
	return nil
}
