package ipc

import (
	"fmt"
	"os"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The layout of an object's shared memory. Every process that maps it runs
// on this machine with this build's layout (the layout number is checked at
// map time), so fields are native-endian words read and written in place.
//
//	header (offsets below)
//	session slots, sessionsPerID of them: one per attached process
//	semaphores (sets): {value int32, pid int32} each
//	ring (queues): records of a 32-byte header and the text, 32-aligned
const (
	offMagic    = 0  // u32
	offLayout   = 4  // u32
	offKind     = 8  // u32
	offLock     = 12 // u32 futex mutex: 0 free, else the holder's session+1, | lockContended
	offRemoved  = 16 // u32: removedByRMID or removedHomeDown
	offSeq      = 20 // u32 futex: bumped on every change a sleeper may wait for
	offSleepers = 24 // u32: processes asleep on seq
	offHome     = 28 // u32
	offID       = 32 // i32
	offKey      = 36 // i32
	offUID      = 40 // u32 ×5: uid, gid, cuid, cgid, mode
	offCTime    = 64 // i64
	offSTime    = 72 // i64: last msgsnd or semop
	offRTime    = 80 // i64: last msgrcv
	offLSPID    = 88 // i32
	offLRPID    = 92 // i32
	offQBytes   = 96 // u64, queues
	offCBytes   = 104
	offQNum     = 112
	offHead     = 120 // ring position of the oldest record
	offUsed     = 128 // ring bytes from head to the end of the newest record
	offRingSize = 136
	offNSems    = 96 // u32, sets
	offSize     = 96 // i64, shared memory segments: the data's bytes
	headerSize  = 256

	segMagic  = 0x53494d50 // "PMIS"
	segLayout = 1

	lockContended = 1 << 31
	lockHome      = 0x7ffffff0 // the holder value of the home itself

	removedByRMID   = 1
	removedHomeDown = 2

	// A session slot: token u64, in use u32, sleeping u32, waits [4]{sem+1
	// u32, kind u32}, then the semaphore adjustments (SEM_UNDO) int16 each.
	slotToken    = 0
	slotInUse    = 8
	slotSleeping = 12
	slotWaits    = 16
	slotWaitMax  = 4
	slotAdj      = 48

	ringRecord = 32 // record header: size u32, text length u32, state u32, pad, type i64, pad
	recLive    = 1
	recDead    = 2
	recPad     = 3

	ringSize = 4 << 20 // sparse: only the pages in use take memory
)

// Wait kinds recorded in a session slot, for GETNCNT and GETZCNT.
const (
	waitIncrease = 1
	waitZero     = 2
)

// Segment is one object's shared memory, mapped in this process.
type Segment struct {
	mem      []byte
	kind     Kind
	nsems    int
	slotSize int
	offSems  int
	offRing  int
}

func align(n, a int) int { return (n + a - 1) / a * a }

func layoutFor(kind Kind, nsems int) (slotSize, offSems, offRing, size int) {
	slotSize = align(slotAdj+2*nsems, 8)
	end := headerSize + sessionsPerID*slotSize
	switch kind {
	case KindSem:
		offSems = end
		size = align(offSems+8*nsems, 4096)
	case KindMsg:
		offRing = align(end, 4096)
		size = offRing + ringSize
	case KindShm:
		// The data is a memfd of its own, mapped where a process attaches
		// it; this part holds the owner, mode and sessions.
		size = align(end, 4096)
	}
	return
}

// memfd makes anonymous shared memory of size bytes, named for /proc.
func memfd(name string, size int64) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), name)
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, fmt.Errorf("size %s: %w", name, err)
	}
	return f, nil
}

// createSegment makes an object's memory: a memfd of the right size, its
// header written. Only the home calls it.
func createSegment(kind Kind, home int, id, key int32, nsems int, perm Perm) (*Segment, *os.File, error) {
	_, _, _, size := layoutFor(kind, nsems)
	f, err := memfd(fmt.Sprintf("smpc-%s-%d", kind, id), int64(size))
	if err != nil {
		return nil, nil, err
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("map %s %d: %w", kind, id, err)
	}
	s := &Segment{mem: mem, kind: kind, nsems: nsems}
	s.slotSize, s.offSems, s.offRing, _ = layoutFor(kind, nsems)
	*s.u32(offLayout) = segLayout
	*s.u32(offKind) = uint32(kind)
	*s.u32(offHome) = uint32(home)
	*s.i32(offID) = id
	*s.i32(offKey) = key
	s.setPerm(perm)
	*s.i64(offCTime) = now()
	switch kind {
	case KindMsg:
		*s.u64(offQBytes) = MsgQBytes
		*s.u64(offRingSize) = ringSize
	case KindSem:
		*s.u32(offNSems) = uint32(nsems)
	}
	atomic.StoreUint32(s.u32(offMagic), segMagic)
	return s, f, nil
}

// Map maps an object's memory from the descriptor its home handed out.
func Map(f *os.File) (*Segment, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map IPC object: %w", err)
	}
	s := &Segment{mem: mem}
	if len(mem) < headerSize || atomic.LoadUint32(s.u32(offMagic)) != segMagic || *s.u32(offLayout) != segLayout {
		unix.Munmap(mem)
		return nil, fmt.Errorf("map IPC object: not an smpc object of layout %d", segLayout)
	}
	s.kind = Kind(*s.u32(offKind))
	if s.kind == KindSem {
		s.nsems = int(*s.u32(offNSems))
	}
	var size int
	s.slotSize, s.offSems, s.offRing, size = layoutFor(s.kind, s.nsems)
	if size != len(mem) {
		unix.Munmap(mem)
		return nil, fmt.Errorf("map IPC object: size %d, want %d", len(mem), size)
	}
	return s, nil
}

// Unmap releases the mapping; the object lives on in its home.
func (s *Segment) Unmap() error {
	if s.mem == nil {
		return nil
	}
	err := unix.Munmap(s.mem)
	s.mem = nil
	return err
}

func (s *Segment) u32(off int) *uint32 { return (*uint32)(unsafe.Pointer(&s.mem[off])) }
func (s *Segment) i32(off int) *int32  { return (*int32)(unsafe.Pointer(&s.mem[off])) }
func (s *Segment) u64(off int) *uint64 { return (*uint64)(unsafe.Pointer(&s.mem[off])) }
func (s *Segment) i64(off int) *int64  { return (*int64)(unsafe.Pointer(&s.mem[off])) }
func (s *Segment) i16(off int) *int16  { return (*int16)(unsafe.Pointer(&s.mem[off])) }

// ID returns the object's ID.
func (s *Segment) ID() int32 { return *s.i32(offID) }

// Home returns the OSlet that holds the object.
func (s *Segment) Home() int { return int(*s.u32(offHome)) }

// NSems returns the number of semaphores of a set.
func (s *Segment) NSems() int { return s.nsems }

func (s *Segment) perm() Perm {
	return Perm{UID: *s.u32(offUID), GID: *s.u32(offUID + 4), CUID: *s.u32(offUID + 8), CGID: *s.u32(offUID + 12), Mode: *s.u32(offUID + 16)}
}

func (s *Segment) setPerm(p Perm) {
	*s.u32(offUID), *s.u32(offUID + 4), *s.u32(offUID + 8), *s.u32(offUID + 12), *s.u32(offUID + 16) = p.UID, p.GID, p.CUID, p.CGID, p.Mode&permBits
}

// Perm returns the object's owner and mode.
func (s *Segment) Perm() Perm { return s.perm() }

// Err says why the object has ended (EIDRM: removed, or its home is down),
// or nil while it lives.
func (s *Segment) Err() error { return s.removedError() }

// removedError says why an object is gone: removed, or its home is down.
func (s *Segment) removedError() error {
	switch atomic.LoadUint32(s.u32(offRemoved)) {
	case removedByRMID:
		return unix.EIDRM
	case removedHomeDown:
		return fmt.Errorf("home oslet %d is down: %w", s.Home(), unix.EIDRM)
	}
	return nil
}

// markRemoved ends the object for every process that maps it and wakes all
// who sleep on it, so that they see EIDRM.
func (s *Segment) markRemoved(why uint32) {
	atomic.CompareAndSwapUint32(s.u32(offRemoved), 0, why)
	atomic.AddUint32(s.u32(offSeq), 1)
	futexWake(s.u32(offSeq), 1<<30)
}

// MarkHomeDown ends the object because its home OSlet died: the OSlets that
// map it call this, so that nobody keeps using an object nobody owns.
func (s *Segment) MarkHomeDown() { s.markRemoved(removedHomeDown) }

// Removed says whether the object has ended.
func (s *Segment) Removed() bool { return atomic.LoadUint32(s.u32(offRemoved)) != 0 }

// lock takes the object's mutex for holder (a session slot + 1, or
// lockHome). The word holds the holder, so that the home can free a mutex
// whose holder was killed (see release).
func (s *Segment) lock(holder uint32) {
	w := s.u32(offLock)
	if atomic.CompareAndSwapUint32(w, 0, holder) {
		return
	}
	// A holder keeps the mutex for a few hundred nanoseconds and never
	// sleeps with it: spin briefly before asking the kernel.
	for range 200 {
		if atomic.LoadUint32(w) == 0 && atomic.CompareAndSwapUint32(w, 0, holder) {
			return
		}
	}
	for {
		old := atomic.LoadUint32(w)
		if old == 0 {
			if atomic.CompareAndSwapUint32(w, 0, holder|lockContended) {
				return
			}
			continue
		}
		if old&lockContended == 0 && !atomic.CompareAndSwapUint32(w, old, old|lockContended) {
			continue
		}
		futexWait(w, old|lockContended, nil)
	}
}

func (s *Segment) unlock() {
	if atomic.SwapUint32(s.u32(offLock), 0)&lockContended != 0 {
		futexWake(s.u32(offLock), 1)
	}
}

// changed records a change that a sleeper may wait for; call it with the
// mutex held, then unlockWake.
func (s *Segment) changed() { atomic.AddUint32(s.u32(offSeq), 1) }

// unlockWake releases the mutex and wakes the sleepers if there are any:
// an operation nobody waits for costs no system call.
func (s *Segment) unlockWake() {
	sleepers := atomic.LoadUint32(s.u32(offSleepers))
	s.unlock()
	if sleepers > 0 {
		futexWake(s.u32(offSeq), 1<<30)
	}
}

// enter checks the caller's session and access, and takes the mutex of an
// object that still exists.
func (s *Segment) enter(slot int, c Cred, want uint32) error {
	if err := s.checkSlot(slot); err != nil {
		return err
	}
	if !s.perm().Allows(c, want) {
		return unix.EACCES
	}
	s.lock(uint32(slot) + 1)
	if err := s.removedError(); err != nil {
		s.unlock()
		return err
	}
	return nil
}

// wait sleeps, with the mutex held, until the next change or the deadline
// (EAGAIN), and returns with the mutex held again, or released with an
// error: the object ended, or the home released the session. The sleeper is
// counted in the header and in its session slot, with what it waits for
// (sem and kind, for GETNCNT and GETZCNT; kind 0 for none), so that the
// home can take it out if the process is killed.
func (s *Segment) wait(slot int, deadline time.Time, sem, kind int) error {
	base := s.slotOff(slot)
	seen := atomic.LoadUint32(s.u32(offSeq))
	token := *s.u64(base + slotToken)
	entry := -1
	if kind != 0 {
		entry = s.recordWait(slot, sem, kind)
	}
	atomic.AddUint32(s.u32(offSleepers), 1)
	atomic.AddUint32(s.u32(base+slotSleeping), 1)
	s.unlock()
	var err error
	if deadline.IsZero() {
		err = futexWait(s.u32(offSeq), seen, nil)
	} else if left := time.Until(deadline); left <= 0 {
		err = unix.ETIMEDOUT
	} else {
		ts := unix.NsecToTimespec(left.Nanoseconds())
		err = futexWait(s.u32(offSeq), seen, &ts)
	}
	s.lock(uint32(slot) + 1)
	if atomic.LoadUint32(s.u32(base+slotInUse)) == 0 || *s.u64(base + slotToken) != token {
		// The home released the session while it slept, and took its
		// sleeper and waits out: the slot may be another's already.
		s.unlock()
		return fmt.Errorf("%s %d: session %d released: %w", s.kind, s.ID(), slot, unix.EINVAL)
	}
	s.clearWait(slot, entry)
	atomic.AddUint32(s.u32(base+slotSleeping), ^uint32(0))
	atomic.AddUint32(s.u32(offSleepers), ^uint32(0))
	if err == nil {
		err = s.removedError()
	}
	if err == unix.ETIMEDOUT {
		err = unix.EAGAIN
	}
	if err != nil {
		s.unlock()
	}
	return err
}

func (s *Segment) slotOff(slot int) int { return headerSize + slot*s.slotSize }

func (s *Segment) checkSlot(slot int) error {
	if slot < 0 || slot >= sessionsPerID || *s.u32(s.slotOff(slot) + slotInUse) == 0 {
		return fmt.Errorf("%s %d: session %d is not attached: %w", s.kind, s.ID(), slot, unix.EINVAL)
	}
	return nil
}

// recordWait notes in the session slot what the process waits for, so that
// GETNCNT and GETZCNT count it; it returns the entry to clear, or -1.
func (s *Segment) recordWait(slot, sem, kind int) int {
	base := s.slotOff(slot) + slotWaits
	for n := range slotWaitMax {
		if *s.u32(base + 8*n) == 0 {
			*s.u32(base + 8*n) = uint32(sem) + 1
			*s.u32(base + 8*n + 4) = uint32(kind)
			return n
		}
	}
	return -1
}

func (s *Segment) clearWait(slot, entry int) {
	if entry >= 0 {
		*s.u32(s.slotOff(slot) + slotWaits + 8*entry) = 0
	}
}

// futexWait and futexWake are the two futex operations the objects need.
// x/sys/unix has the system call number but no wrapper or constants. The
// futexes are shared (not FUTEX_PRIVATE_FLAG): their processes are in
// different OSlets, and the kernel keys them by the memfd's page.
const (
	futexWaitOp = 0
	futexWakeOp = 1
)

func futexWait(addr *uint32, val uint32, ts *unix.Timespec) error {
	_, _, e := unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWaitOp, uintptr(val), uintptr(unsafe.Pointer(ts)), 0, 0)
	if e == unix.ETIMEDOUT {
		return e
	}
	return nil // woken, EAGAIN (the value moved) or EINTR: the caller looks again
}

func futexWake(addr *uint32, n int) {
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWakeOp, uintptr(n), 0, 0, 0)
}

// Stat returns the object's description. Attached is left to the home.
func (s *Segment) Stat() Info {
	info := Info{
		Kind: s.kind, ID: s.ID(), Key: *s.i32(offKey), Home: s.Home(), Perm: s.perm(),
		CTime: atomic.LoadInt64(s.i64(offCTime)), STime: atomic.LoadInt64(s.i64(offSTime)),
		LSPID: atomic.LoadInt32(s.i32(offLSPID)),
	}
	switch s.kind {
	case KindMsg:
		info.QBytes = atomic.LoadUint64(s.u64(offQBytes))
		info.CBytes = atomic.LoadUint64(s.u64(offCBytes))
		info.QNum = atomic.LoadUint64(s.u64(offQNum))
		info.LRPID = atomic.LoadInt32(s.i32(offLRPID))
		info.RTime = atomic.LoadInt64(s.i64(offRTime))
	case KindSem:
		info.NSems = s.nsems
	case KindShm:
		info.Size = atomic.LoadInt64(s.i64(offSize))
	}
	return info
}
