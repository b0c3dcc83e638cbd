package smpc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc/internal/fabric"
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

// IPC errors are the errno values Linux's calls give, for errors.Is:
// syscall.EEXIST, ENOENT, EACCES, EPERM, EAGAIN, EIDRM, ENOMSG, E2BIG,
// EINVAL, ERANGE, EFBIG and ENOSPC. An object whose home OSlet went down
// gives EIDRM with a message that names the home.

// IPCKind says whether an object is a message queue or a semaphore set.
type IPCKind = ipc.Kind

// The IPC kinds.
const (
	KindMsg = ipc.KindMsg
	KindSem = ipc.KindSem
	KindShm = ipc.KindShm
)

// IPCInfo describes an IPC object, as IPC_STAT and ipcs(1) do.
type IPCInfo = ipc.Info

// IPCSet is what IPC_SET changes: owner, mode and a queue's byte limit.
type IPCSet = ipc.SetRequest

// SemOp is one operation of Op, as struct sembuf: add Delta to semaphore
// Num, block while that would go below zero, or with Delta 0 wait for zero.
type SemOp = ipc.SemOp

// IPCHomeOfKey returns the OSlet, among oslets (the cluster's, as
// Client.OSlets gives them), that is home to the objects with key.
func IPCHomeOfKey(key int32, oslets []int) int { return ipc.HomeOfKey(key, oslets) }

// ParseIPCKey reads a key in decimal or 0x hex.
func ParseIPCKey(s string) (int32, error) { return ipc.ParseKey(s) }

// ipcObject is what a message queue and a semaphore set share: the
// object's shared memory, mapped in this process, and the caller's session.
type ipcObject struct {
	c    *Client
	kind IPCKind
	id   int32
	home int
	slot int // -1: no access, so no memory mapped
	cred ipc.Cred

	// mu lets operations run at once and keeps Close, and a home's death,
	// from unmapping the memory under them.
	mu   sync.RWMutex
	seg  *ipc.Segment // nil once closed
	data *os.File     // a shared memory segment's pages; nil for others
}

// get asks the object's home for it (msgget, semget) and maps its memory.
func (c *Client) ipcGet(ctx context.Context, req fabric.IPCGetRequest) (*ipcObject, error) {
	if req.Kind == KindSem && req.NSems < 0 {
		return nil, fmt.Errorf("semget: %d semaphores: %w", req.NSems, syscall.EINVAL)
	}
	if err := c.checkID(req.Kind, req.ID); err != nil {
		return nil, fmt.Errorf("%sget: %w", req.Kind, err)
	}
	home := c.ipcHome(req.Key, req.ID)
	var reply fabric.IPCGetReply
	files, err := c.call(ctx, home, fabric.OpIPCGet, req, nil, &reply)
	defer fabric.CloseAll(files)
	what := fmt.Sprintf("%s key %s", req.Kind, ipc.FormatKey(req.Key))
	if req.ID != 0 {
		what = fmt.Sprintf("%s id %d", req.Kind, req.ID)
	}
	if err != nil {
		return nil, fmt.Errorf("%sget %s: %w", req.Kind, what, err)
	}
	o := &ipcObject{c: c, kind: req.Kind, id: reply.ID, home: reply.Home, slot: reply.Slot, cred: c.ipcCred()}
	if reply.Slot >= 0 {
		want := 1
		if req.Kind == KindShm {
			want = 2
		}
		if len(files) != want {
			return nil, fmt.Errorf("%sget %s: home oslet %d sent %d descriptors, want %d", req.Kind, what, reply.Home, len(files), want)
		}
		if o.seg, err = ipc.Map(files[0]); err != nil {
			return nil, fmt.Errorf("%sget %s: %w", req.Kind, what, err)
		}
		if req.Kind == KindShm {
			o.data, files[1] = files[1], nil // kept: Attach maps it
		}
		c.watchHome(o)
	}
	return o, nil
}

// checkID refuses an ID whose home bits name no OSlet, as Linux refuses
// an ID it never gave out.
func (c *Client) checkID(kind IPCKind, id int32) error {
	if id < 0 || (id != 0 && !c.known(ipc.HomeOfID(id))) {
		return fmt.Errorf("%s id %d: no such object: %w", kind, id, syscall.EINVAL)
	}
	return nil
}

// ipcHome is the OSlet whose channel takes a get: inside, the own init
// routes it; on the host, the home itself.
func (c *Client) ipcHome(key, id int32) int {
	switch {
	case c.inside:
		return 0
	case id != 0:
		return ipc.HomeOfID(id)
	case key == ipc.Private:
		return c.oslets[0]
	}
	return ipc.HomeOfKey(key, c.oslets)
}

// ipcCred is the identity the fast path records and checks. The home has
// checked the kernel's word when it handed out the memory; processes that
// share an object's memory trust each other, as with any shared memory.
func (c *Client) ipcCred() ipc.Cred {
	groups, _ := os.Getgroups()
	cred := ipc.Cred{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid()), PID: int32(os.Getpid())}
	for _, g := range groups {
		cred.Groups = append(cred.Groups, uint32(g))
	}
	if c.inside {
		cred.PID = int32(vproc.Global(c.self, os.Getpid()))
	}
	return cred
}

// watchHome makes sure that, on the host, an object whose home dies is
// ended for this process: inside an OSlet the own init does it.
func (c *Client) watchHome(o *ipcObject) {
	if c.inside {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ipcObjects == nil {
		c.ipcObjects = map[*ipcObject]bool{}
	}
	c.ipcObjects[o] = true
	if c.watching[o.home] {
		return
	}
	if c.watching == nil {
		c.watching = map[int]bool{}
	}
	c.watching[o.home] = true
	go c.watch(o.home)
}

// watch waits for home's channel to end, and if the home itself is gone
// (not this client closing, not a channel that a redial restores) ends the
// objects of that home for this process.
func (c *Client) watch(home int) {
	for {
		// The home answers a watch only when the channel ends.
		_, err := c.call(context.Background(), home, fabric.OpIPCWatch, fabric.Empty{}, nil, &fabric.Empty{})
		if !errors.Is(err, ErrDown) || c.isClosed() {
			break
		}
		if _, err := c.channel(home); err == nil {
			continue // the home is up: watch the new channel
		}
		c.mu.Lock()
		var ended []*ipcObject
		for obj := range c.ipcObjects {
			if obj.home == home {
				ended = append(ended, obj)
			}
		}
		c.mu.Unlock()
		for _, obj := range ended {
			obj.mu.RLock()
			if obj.seg != nil && !c.isClosed() {
				obj.seg.MarkHomeDown()
			}
			obj.mu.RUnlock()
		}
		break
	}
	c.mu.Lock()
	delete(c.watching, home)
	c.mu.Unlock()
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// ID returns the object's identifier, as ipcs(1) shows it.
func (o *ipcObject) ID() int32 { return o.id }

// Home returns the OSlet that holds the object.
func (o *ipcObject) Home() int { return o.home }

// use runs an operation on the mapped memory.
func (o *ipcObject) use(op string, f func(seg *ipc.Segment) error) error {
	o.mu.RLock()
	defer o.mu.RUnlock()
	var err error
	switch {
	case o.seg != nil:
		err = f(o.seg)
	case o.slot < 0:
		err = syscall.EACCES
	default:
		err = syscall.EINVAL // closed
	}
	if err != nil {
		return fmt.Errorf("%s %s %d: %w", op, o.kind, o.id, err)
	}
	return nil
}

// ctl sends IPC_STAT, IPC_SET or IPC_RMID to the object's home.
func (o *ipcObject) ctl(ctx context.Context, cmd string, set *IPCSet) (IPCInfo, error) {
	var reply fabric.IPCCtlReply
	_, err := o.c.call(ctx, o.c.ipcHome(0, o.id), fabric.OpIPCCtl, fabric.IPCCtlRequest{Kind: o.kind, Cmd: cmd, ID: o.id, Set: set}, nil, &reply)
	if err != nil {
		return IPCInfo{}, fmt.Errorf("%sctl %s %d: %w", o.kind, cmd, o.id, err)
	}
	return reply.Info, nil
}

// Stat is IPC_STAT.
func (o *ipcObject) Stat(ctx context.Context) (IPCInfo, error) {
	return o.ctl(ctx, fabric.IPCStat, nil)
}

// Set is IPC_SET.
func (o *ipcObject) Set(ctx context.Context, set IPCSet) (IPCInfo, error) {
	return o.ctl(ctx, fabric.IPCSet, &set)
}

// Remove is IPC_RMID: the object ends for every process at once; those
// blocked on it wake with EIDRM.
func (o *ipcObject) Remove(ctx context.Context) error {
	_, err := o.ctl(ctx, fabric.IPCRemove, nil)
	return err
}

// Close unmaps the object from this process; the object lives on. Its
// session (and SEM_UNDO adjustments) end when the Client closes or the
// process exits.
func (o *ipcObject) Close() error {
	o.c.mu.Lock()
	delete(o.c.ipcObjects, o)
	o.c.mu.Unlock()
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.seg == nil {
		return nil
	}
	err := o.seg.Unmap()
	o.seg = nil
	if o.data != nil {
		o.data.Close()
		o.data = nil
	}
	return err
}

// MsgQueue is a System V message queue of the cluster. Its methods mirror
// msgsnd(2), msgrcv(2) and msgctl(2); sending and receiving run in the
// caller's process on the queue's shared memory, with no message to any
// OSlet.
type MsgQueue struct{ *ipcObject }

// MsgGet is msgget(2): the queue with key (the same queue from every
// OSlet), created with IPCCreate and the mode bits in flags.
func (c *Client) MsgGet(ctx context.Context, key int32, flags int) (*MsgQueue, error) {
	o, err := c.ipcGet(ctx, fabric.IPCGetRequest{Kind: KindMsg, Key: key, Flags: flags})
	if err != nil {
		return nil, err
	}
	return &MsgQueue{o}, nil
}

// MsgOpen opens an existing queue by its ID, as msgsnd(2) on an ID that
// another process passed along.
func (c *Client) MsgOpen(ctx context.Context, id int32) (*MsgQueue, error) {
	o, err := c.ipcGet(ctx, fabric.IPCGetRequest{Kind: KindMsg, ID: id})
	if err != nil {
		return nil, err
	}
	return &MsgQueue{o}, nil
}

// Send is msgsnd(2): it queues text with type mtype (at least 1), blocking
// while the queue is full unless flags has IPCNoWait.
func (q *MsgQueue) Send(mtype int64, text []byte, flags int) error {
	return q.use("msgsnd", func(seg *ipc.Segment) error { return seg.Send(q.slot, q.cred, mtype, text, flags) })
}

// Receive is msgrcv(2): mtype 0 takes the first message, a positive type
// the first of that type (with MsgExcept the first of another type), a
// negative type the first of the lowest type up to its absolute value. It
// blocks until one comes unless flags has IPCNoWait (ENOMSG). A message
// longer than max is E2BIG unless MsgNoError truncates it.
func (q *MsgQueue) Receive(mtype int64, max int, flags int) (gotType int64, text []byte, err error) {
	err = q.use("msgrcv", func(seg *ipc.Segment) error {
		gotType, text, err = seg.Receive(q.slot, q.cred, mtype, max, flags)
		return err
	})
	return gotType, text, err
}

// SemSet is a System V semaphore set of the cluster. Its methods mirror
// semop(2) and semctl(2); operations run in the caller's process on the
// set's shared memory, sleeping on a futex when they must wait.
type SemSet struct{ *ipcObject }

// SemGet is semget(2): the set with key, created with nsems semaphores
// with IPCCreate and the mode bits in flags.
func (c *Client) SemGet(ctx context.Context, key int32, nsems int, flags int) (*SemSet, error) {
	o, err := c.ipcGet(ctx, fabric.IPCGetRequest{Kind: KindSem, Key: key, NSems: nsems, Flags: flags})
	if err != nil {
		return nil, err
	}
	return &SemSet{o}, nil
}

// SemOpen opens an existing set by its ID.
func (c *Client) SemOpen(ctx context.Context, id int32) (*SemSet, error) {
	o, err := c.ipcGet(ctx, fabric.IPCGetRequest{Kind: KindSem, ID: id})
	if err != nil {
		return nil, err
	}
	return &SemSet{o}, nil
}

// Op is semop(2): every operation applies, atomically, or the caller
// blocks until all can (EAGAIN for an operation flagged IPCNoWait).
// Operations flagged SemUndo are undone when the process ends, on
// whatever OSlet it lived.
func (s *SemSet) Op(ops ...SemOp) error {
	return s.use("semop", func(seg *ipc.Segment) error { return seg.Op(s.slot, s.cred, ops, time.Time{}) })
}

// TimedOp is semtimedop(2): Op that gives up with EAGAIN after timeout.
func (s *SemSet) TimedOp(timeout time.Duration, ops ...SemOp) error {
	deadline := time.Now().Add(timeout)
	return s.use("semtimedop", func(seg *ipc.Segment) error { return seg.Op(s.slot, s.cred, ops, deadline) })
}

// NSems returns how many semaphores the set has.
func (s *SemSet) NSems() (n int) {
	s.use("semctl IPC_STAT", func(seg *ipc.Segment) error { n = seg.NSems(); return nil })
	return n
}

// GetVal is semctl GETVAL.
func (s *SemSet) GetVal(n int) (v int, err error) {
	err = s.use("semctl GETVAL", func(seg *ipc.Segment) error { v, err = seg.Value(s.cred, n); return err })
	return v, err
}

// GetAll is semctl GETALL.
func (s *SemSet) GetAll() (vals []int, err error) {
	err = s.use("semctl GETALL", func(seg *ipc.Segment) error { vals, err = seg.Values(s.cred); return err })
	return vals, err
}

// SetVal is semctl SETVAL; it clears every process's undo for semaphore n.
func (s *SemSet) SetVal(n, v int) error {
	return s.use("semctl SETVAL", func(seg *ipc.Segment) error { return seg.SetValue(s.slot, s.cred, n, v) })
}

// SetAll is semctl SETALL.
func (s *SemSet) SetAll(vals []int) error {
	return s.use("semctl SETALL", func(seg *ipc.Segment) error { return seg.SetValues(s.slot, s.cred, vals) })
}

// GetPID is semctl GETPID: the global PID of the last process to operate
// on semaphore n.
func (s *SemSet) GetPID(n int) (pid PID, err error) {
	err = s.use("semctl GETPID", func(seg *ipc.Segment) error {
		p, err := seg.LastPID(s.cred, n)
		pid = PID(p)
		return err
	})
	return pid, err
}

// GetNCnt is semctl GETNCNT: processes waiting for semaphore n to grow.
func (s *SemSet) GetNCnt(n int) (count int, err error) {
	err = s.use("semctl GETNCNT", func(seg *ipc.Segment) error { count, err = seg.Waiting(s.cred, n, false); return err })
	return count, err
}

// GetZCnt is semctl GETZCNT: processes waiting for semaphore n to be zero.
func (s *SemSet) GetZCnt(n int) (count int, err error) {
	err = s.use("semctl GETZCNT", func(seg *ipc.Segment) error { count, err = seg.Waiting(s.cred, n, true); return err })
	return count, err
}

// ShmSegment is a System V shared memory segment of the cluster: the same
// pages for every process that attaches it, on any OSlet. Its home OSlet
// allocates the pages, so they count against the home's memory. Its
// methods mirror shmat(2), shmdt(2) and shmctl(2).
type ShmSegment struct{ *ipcObject }

// ShmGet is shmget(2): the segment with key, created with size bytes with
// IPCCreate and the mode bits in flags. A size past the home's free memory
// is refused (ENOMEM); a size past an existing segment's is EINVAL.
func (c *Client) ShmGet(ctx context.Context, key int32, size int64, flags int) (*ShmSegment, error) {
	o, err := c.ipcGet(ctx, fabric.IPCGetRequest{Kind: KindShm, Key: key, Size: size, Flags: flags})
	if err != nil {
		return nil, err
	}
	return &ShmSegment{o}, nil
}

// Size returns the segment's size in bytes.
func (s *ShmSegment) Size() (n int64) {
	s.use("shmctl IPC_STAT", func(seg *ipc.Segment) error { n = seg.Stat().Size; return nil })
	return n
}

// Attach is shmat(2): it maps the segment's pages, for reading and, unless
// readOnly, writing, where the owner and mode bits allow.
func (s *ShmSegment) Attach(readOnly bool) (mem []byte, err error) {
	err = s.use("shmat", func(seg *ipc.Segment) error {
		want, prot := uint32(ipc.AccessRead|ipc.AccessWrite), unix.PROT_READ|unix.PROT_WRITE
		if readOnly {
			want, prot = ipc.AccessRead, unix.PROT_READ
		}
		if !seg.Perm().Allows(s.cred, want) {
			return syscall.EACCES
		}
		info := seg.Stat()
		if err := seg.Err(); err != nil {
			return err
		}
		mem, err = unix.Mmap(int(s.data.Fd()), 0, int(info.Size), prot, unix.MAP_SHARED)
		return err
	})
	return mem, err
}

// Detach is shmdt(2): it unmaps memory that Attach returned. The pages
// stay with the segment, and with the others who have it attached.
func (s *ShmSegment) Detach(mem []byte) error {
	if err := unix.Munmap(mem); err != nil {
		return fmt.Errorf("shmdt shm %d: %w", s.id, err)
	}
	return nil
}

// IPCs lists every message queue, shared memory segment and semaphore set of
// the cluster, as ipcs(1) does; down lists the OSlets that could not answer.
func (c *Client) IPCs(ctx context.Context) (objects []IPCInfo, down []int, err error) {
	if c.inside {
		var r fabric.IPCListReply
		_, err := c.call(ctx, 0, fabric.OpIPCList, fabric.IPCListRequest{Cluster: true}, nil, &r)
		return r.Objects, r.Down, err
	}
	down, err = c.eachOSlet(func(k int) (func(), error) {
		var r fabric.IPCListReply
		_, err := c.call(ctx, k, fabric.OpIPCList, fabric.IPCListRequest{}, nil, &r)
		return func() { objects = append(objects, r.Objects...) }, err
	})
	slices.SortFunc(objects, func(a, b IPCInfo) int { return int(a.ID - b.ID) })
	return objects, down, err
}

// RemoveIPC is IPC_RMID on the object of this kind with ID id.
func (c *Client) RemoveIPC(ctx context.Context, kind IPCKind, id int32) error {
	if err := c.checkID(kind, id); err != nil || id == 0 {
		return fmt.Errorf("remove %s id %d: no such object: %w", kind, id, syscall.EINVAL)
	}
	_, err := c.call(ctx, c.ipcHome(0, id), fabric.OpIPCCtl, fabric.IPCCtlRequest{Kind: kind, Cmd: fabric.IPCRemove, ID: id}, nil, &fabric.IPCCtlReply{})
	if err != nil {
		return fmt.Errorf("remove %s id %d: %w", kind, id, err)
	}
	return nil
}

// RemoveIPCKey is IPC_RMID on the object of this kind with key.
func (c *Client) RemoveIPCKey(ctx context.Context, kind IPCKind, key int32) error {
	if key == ipc.Private {
		return fmt.Errorf("remove %s key %s: the private key names no object: %w", kind, ipc.FormatKey(key), syscall.EINVAL)
	}
	_, err := c.call(ctx, c.ipcHome(key, 0), fabric.OpIPCCtl, fabric.IPCCtlRequest{Kind: kind, Cmd: fabric.IPCRemove, Key: key, ByKey: true}, nil, &fabric.IPCCtlReply{})
	if err != nil {
		return fmt.Errorf("remove %s key %s: %w", kind, ipc.FormatKey(key), err)
	}
	return nil
}
