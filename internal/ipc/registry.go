package ipc

import (
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// GetRequest is msgget(2) or semget(2) as the home sees it: Key, or with ID
// set an existing object by its ID (for the commands that take IDs).
type GetRequest struct {
	Kind  Kind
	Key   int32
	ID    int32
	Flags int // Create, Excl and the mode bits
	NSems int
	Size  int64 // shared memory segments: bytes
	Cred  Cred
	// Token names the caller's channel to its own OSlet; when that channel
	// closes, the process is gone and its session is released.
	Token uint64
}

// GetResult names the object and the caller's session in it (-1 when the
// caller may neither read nor write it, and so gets no descriptor).
type GetResult struct {
	ID   int32
	Slot int
}

// TokenOrigin returns the OSlet whose init made a token: its top bits.
func TokenOrigin(token uint64) int { return int(token >> 40) }

// MakeToken makes a token from the OSlet that issues it and a serial there.
func MakeToken(oslet int, serial uint64) uint64 { return uint64(oslet)<<40 | serial&(1<<40-1) }

// Registry is a home OSlet's table of the objects it holds.
type Registry struct {
	home int
	// Free, if set, returns the home's free memory: a shared memory
	// segment larger than that is refused, since its pages count there.
	Free func() int64

	mu      sync.Mutex
	objects map[int32]*object
	keys    map[Kind]map[int32]int32 // key → ID; private objects have none
	serial  int32
	tokens  map[uint64][]int32 // token → objects it holds a session in
}

type object struct {
	seg      *Segment
	file     *os.File
	data     *os.File // a shared memory segment's pages
	key      int32
	sessions map[uint64]int // token → slot
}

// NewRegistry makes the table of OSlet home.
func NewRegistry(home int) *Registry {
	return &Registry{home: home, objects: map[int32]*object{}, keys: map[Kind]map[int32]int32{KindMsg: {}, KindSem: {}, KindShm: {}}, tokens: map[uint64][]int32{}}
}

// Get finds or creates an object as msgget(2), semget(2) and shmget(2) do,
// and opens a session in it for the caller's token. It returns the
// object's descriptors (the table keeps them; send copies): its memory, and
// for a shared memory segment the segment's pages. There are none when the
// caller has no access (the call succeeds, as it does on Linux, and every
// operation will be refused).
func (r *Registry) Get(req GetRequest) (GetResult, []*os.File, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !req.Kind.valid() {
		return GetResult{}, nil, unix.EINVAL
	}
	var o *object
	switch {
	case req.ID != 0:
		o = r.objects[req.ID]
		if o == nil || o.seg.kind != req.Kind {
			return GetResult{}, nil, fmt.Errorf("%s id %d: %w", req.Kind, req.ID, unix.EINVAL)
		}
	case req.Key != Private:
		if id, ok := r.keys[req.Kind][req.Key]; ok {
			o = r.objects[id]
		}
	}
	if o != nil && req.ID == 0 && req.Flags&(Create|Excl) == Create|Excl {
		return GetResult{}, nil, fmt.Errorf("%s key %s: %w", req.Kind, FormatKey(req.Key), unix.EEXIST)
	}
	if o == nil && req.ID == 0 {
		if req.Key != Private && req.Flags&Create == 0 {
			return GetResult{}, nil, fmt.Errorf("%s key %s: %w", req.Kind, FormatKey(req.Key), unix.ENOENT)
		}
		var err error
		if o, err = r.create(req); err != nil {
			return GetResult{}, nil, err
		}
	}
	perm := o.seg.perm()
	// ipcperms: the mode bits asked for, in any of the three places, must
	// all be granted.
	f := uint32(req.Flags & permBits)
	if !perm.Allows(req.Cred, (f>>6|f>>3|f)&7) {
		return GetResult{}, nil, fmt.Errorf("%s %d: %w", req.Kind, o.seg.ID(), unix.EACCES)
	}
	if req.Kind == KindSem && req.NSems > o.seg.nsems {
		return GetResult{}, nil, fmt.Errorf("sem %d has %d semaphores, not %d: %w", o.seg.ID(), o.seg.nsems, req.NSems, unix.EINVAL)
	}
	if req.Kind == KindShm {
		if size := *o.seg.i64(offSize); req.Size > size {
			return GetResult{}, nil, fmt.Errorf("shm %d has %d bytes, not %d: %w", o.seg.ID(), size, req.Size, unix.EINVAL)
		}
	}
	res := GetResult{ID: o.seg.ID(), Slot: -1}
	if !perm.Allows(req.Cred, AccessRead) && !perm.Allows(req.Cred, AccessWrite) {
		return res, nil, nil
	}
	slot, err := r.openSession(o, req.Token)
	if err != nil {
		return GetResult{}, nil, err
	}
	res.Slot = slot
	if o.data != nil {
		return res, []*os.File{o.file, o.data}, nil
	}
	return res, []*os.File{o.file}, nil
}

// openSession gives token a session slot in o, or the one it has.
func (r *Registry) openSession(o *object, token uint64) (int, error) {
	if slot, ok := o.sessions[token]; ok {
		return slot, nil
	}
	for slot := range sessionsPerID {
		base := o.seg.slotOff(slot)
		if atomic.LoadUint32(o.seg.u32(base+slotInUse)) != 0 {
			continue
		}
		*o.seg.u64(base + slotToken) = token
		atomic.StoreUint32(o.seg.u32(base+slotInUse), 1)
		o.sessions[token] = slot
		r.tokens[token] = append(r.tokens[token], o.seg.ID())
		return slot, nil
	}
	return 0, fmt.Errorf("%s %d: %d processes attached already: %w", o.seg.kind, o.seg.ID(), sessionsPerID, unix.ENOSPC)
}

func (r *Registry) create(req GetRequest) (*object, error) {
	if req.Kind == KindSem && (req.NSems <= 0 || req.NSems > SemMax) {
		return nil, fmt.Errorf("sem key %s: %d semaphores (1 to %d): %w", FormatKey(req.Key), req.NSems, SemMax, unix.EINVAL)
	}
	if req.Kind == KindShm {
		if req.Size <= 0 {
			return nil, fmt.Errorf("shm key %s: size %d: %w", FormatKey(req.Key), req.Size, unix.EINVAL)
		}
		if r.Free != nil && req.Size > r.Free() {
			return nil, fmt.Errorf("shm key %s: %d bytes is more than the %d oslet %d has free: %w", FormatKey(req.Key), req.Size, max(r.Free(), 0), r.home, unix.ENOMEM)
		}
	}
	if len(r.objects) >= 1<<IDBits-1 {
		return nil, unix.ENOSPC
	}
	for {
		r.serial = r.serial%(1<<IDBits-1) + 1
		if _, used := r.objects[MakeID(r.home, r.serial)]; !used {
			break
		}
	}
	id := MakeID(r.home, r.serial)
	perm := Perm{UID: req.Cred.UID, GID: req.Cred.GID, CUID: req.Cred.UID, CGID: req.Cred.GID, Mode: uint32(req.Flags & permBits)}
	seg, f, err := createSegment(req.Kind, r.home, id, req.Key, req.NSems, perm)
	if err != nil {
		return nil, fmt.Errorf("%s key %s: %w", req.Kind, FormatKey(req.Key), err)
	}
	o := &object{seg: seg, file: f, key: req.Key, sessions: map[uint64]int{}}
	if req.Kind == KindShm {
		if o.data, err = shmData(id, req.Size); err != nil {
			seg.Unmap()
			f.Close()
			return nil, fmt.Errorf("shm key %s: %w", FormatKey(req.Key), err)
		}
		*seg.i64(offSize) = req.Size
	}
	r.objects[id] = o
	if req.Key != Private {
		r.keys[req.Kind][req.Key] = id
	}
	return o, nil
}

// SetRequest is IPC_SET: the new owner and mode, and for a queue its byte
// limit (0 leaves it).
type SetRequest struct {
	UID    uint32 `json:"uid"`
	GID    uint32 `json:"gid"`
	Mode   uint32 `json:"mode"`
	QBytes uint64 `json:"qbytes,omitempty"`
}

// Set is IPC_SET: the owner, the creator or root may change the owner, the
// mode and a queue's limit; raising the limit past the default takes root.
func (r *Registry) Set(kind Kind, id int32, c Cred, set SetRequest) (Info, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	o, err := r.lookup(kind, id)
	if err != nil {
		return Info{}, err
	}
	p := o.seg.perm()
	if !p.Controls(c) {
		return Info{}, fmt.Errorf("%s %d: %w", kind, id, unix.EPERM)
	}
	if set.QBytes != 0 {
		if kind != KindMsg || set.QBytes > MaxQBytes {
			return Info{}, fmt.Errorf("%s %d: byte limit %d (at most %d): %w", kind, id, set.QBytes, MaxQBytes, unix.EINVAL)
		}
		if set.QBytes > MsgQBytes && set.QBytes > o.seg.Stat().QBytes && c.UID != 0 {
			return Info{}, fmt.Errorf("%s %d: raising the byte limit past %d takes root: %w", kind, id, MsgQBytes, unix.EPERM)
		}
	}
	o.seg.lock(lockHome)
	p.UID, p.GID, p.Mode = set.UID, set.GID, set.Mode&permBits
	o.seg.setPerm(p)
	if set.QBytes != 0 {
		atomic.StoreUint64(o.seg.u64(offQBytes), set.QBytes) // senders that now fit wake below
	}
	atomic.StoreInt64(o.seg.i64(offCTime), now())
	o.seg.changed()
	o.seg.unlockWake()
	return r.info(o), nil
}

// Remove is IPC_RMID: the object ends at once for everyone, and its
// sleepers wake with EIDRM. Its memory goes when the last mapping does.
func (r *Registry) Remove(kind Kind, id int32, c Cred) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	o, err := r.lookup(kind, id)
	if err != nil {
		return err
	}
	if !o.seg.perm().Controls(c) {
		return fmt.Errorf("%s %d: %w", kind, id, unix.EPERM)
	}
	o.seg.markRemoved(removedByRMID)
	delete(r.objects, id)
	if o.key != Private {
		delete(r.keys[kind], o.key)
	}
	for token := range o.sessions {
		r.tokens[token] = slices.DeleteFunc(r.tokens[token], func(x int32) bool { return x == id })
		if len(r.tokens[token]) == 0 {
			delete(r.tokens, token)
		}
	}
	o.close()
	return nil
}

// close lets go of the table's hold on an object; its memory lives on in
// the processes that map it.
func (o *object) close() {
	o.seg.Unmap()
	o.file.Close()
	if o.data != nil {
		o.data.Close()
	}
}

// shmData makes a shared memory segment's pages, allocated here so that the
// home's memory cgroup is charged for them (shared memory pages count
// against whoever first allocates them).
func shmData(id int32, size int64) (*os.File, error) {
	f, err := memfd(fmt.Sprintf("smpc-shm-%d-data", id), size)
	if err != nil {
		return nil, err
	}
	if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
		f.Close()
		return nil, fmt.Errorf("allocate %d bytes: %w", size, err)
	}
	return f, nil
}

// IDOfKey returns the ID of the object with this key, for ipcrm -Q and -S.
func (r *Registry) IDOfKey(kind Kind, key int32) (int32, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	id, ok := r.keys[kind][key]
	if !ok || key == Private {
		return 0, fmt.Errorf("%s key %s: %w", kind, FormatKey(key), unix.ENOENT)
	}
	return id, nil
}

// Stat is IPC_STAT as the home answers it.
func (r *Registry) Stat(kind Kind, id int32, c Cred) (Info, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	o, err := r.lookup(kind, id)
	if err != nil {
		return Info{}, err
	}
	if !o.seg.perm().Allows(c, AccessRead) {
		return Info{}, fmt.Errorf("%s %d: %w", kind, id, unix.EACCES)
	}
	return r.info(o), nil
}

func (r *Registry) lookup(kind Kind, id int32) (*object, error) {
	o := r.objects[id]
	if o == nil || o.seg.kind != kind {
		return nil, fmt.Errorf("%s id %d: %w", kind, id, unix.EINVAL)
	}
	return o, nil
}

func (r *Registry) info(o *object) Info {
	info := o.seg.Stat()
	info.Attached = len(o.sessions)
	return info
}

// List describes every object of this home, as ipcs(1) lists them (every
// object, whatever its mode, as on Linux).
func (r *Registry) List() []Info {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Info, 0, len(r.objects))
	for _, o := range r.objects {
		out = append(out, r.info(o))
	}
	slices.SortFunc(out, func(a, b Info) int { return int(a.ID - b.ID) })
	return out
}

// Release ends every session of token: the process behind it is gone. Its
// semaphore adjustments are applied (SEM_UNDO), the sleepers it left are
// taken out of the counts, and a mutex it died holding is freed.
func (r *Registry) Release(token uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, id := range r.tokens[token] {
		o := r.objects[id]
		if o == nil {
			continue
		}
		slot, ok := o.sessions[token]
		if !ok {
			continue
		}
		delete(o.sessions, token)
		o.seg.releaseSlot(slot)
	}
	delete(r.tokens, token)
}

// ReleaseOrigin ends the sessions of every process of OSlet k, which has
// died.
func (r *Registry) ReleaseOrigin(k int) {
	r.mu.Lock()
	var tokens []uint64
	for t := range r.tokens {
		if TokenOrigin(t) == k {
			tokens = append(tokens, t)
		}
	}
	r.mu.Unlock()
	for _, t := range tokens {
		r.Release(t)
	}
}

// Close ends every object: the home is shutting down.
func (r *Registry) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, o := range r.objects {
		o.seg.markRemoved(removedHomeDown)
		o.close()
		delete(r.objects, id)
	}
}

// releaseSlot frees a session whose process is gone.
func (s *Segment) releaseSlot(slot int) {
	holder := uint32(slot) + 1
	w := s.u32(offLock)
	// The process may have died holding the mutex: take it over.
	if !atomic.CompareAndSwapUint32(w, holder, lockHome) && !atomic.CompareAndSwapUint32(w, holder|lockContended, lockHome|lockContended) {
		s.lock(lockHome)
	}
	base := s.slotOff(slot)
	if n := atomic.SwapUint32(s.u32(base+slotSleeping), 0); n > 0 {
		atomic.AddUint32(s.u32(offSleepers), -n)
	}
	for e := range slotWaitMax {
		*s.u32(base + slotWaits + 8*e) = 0
	}
	if s.kind == KindSem {
		s.undo(slot)
	}
	*s.u64(base + slotToken) = 0
	atomic.StoreUint32(s.u32(base+slotInUse), 0)
	s.changed()
	s.unlock()
	// Wake everyone, whatever the count says: the undo may let others on,
	// and a sleeper of this session (a process the home counts as gone)
	// must see its release rather than sleep on.
	futexWake(s.u32(offSeq), 1<<30)
}
