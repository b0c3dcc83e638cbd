package ipc

import (
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// SemOp is one operation of semop(2), as struct sembuf.
type SemOp struct {
	Num   uint16 // semaphore number
	Delta int16  // sem_op: add, subtract (blocking below zero), or 0: wait for zero
	Flags int16  // NoWait, Undo
}

func (s *Segment) semVal(n int) *int32 { return s.i32(s.offSems + 8*n) }
func (s *Segment) semPID(n int) *int32 { return s.i32(s.offSems + 8*n + 4) }
func (s *Segment) adj(slot, n int) *int16 {
	return s.i16(s.slotOff(slot) + slotAdj + 2*n)
}

// Op is semop(2) and, with a deadline, semtimedop(2): every operation
// applies, atomically, or none does and the caller sleeps until they can
// (EAGAIN for an operation flagged NoWait, or when the deadline passes).
func (s *Segment) Op(slot int, c Cred, ops []SemOp, deadline time.Time) error {
	if len(ops) == 0 {
		return unix.EINVAL
	}
	if len(ops) > SemOpMax {
		return unix.E2BIG
	}
	want := uint32(AccessRead)
	for _, op := range ops {
		if int(op.Num) >= s.nsems {
			return unix.EFBIG
		}
		if op.Delta != 0 {
			want = AccessWrite
		}
	}
	if err := s.enter(slot, c, want); err != nil {
		return err
	}
	for {
		blocked, kind, err := s.try(slot, ops)
		if err != nil {
			s.unlock()
			return err
		}
		if blocked < 0 {
			break
		}
		if ops[blocked].Flags&NoWait != 0 {
			s.unlock()
			return unix.EAGAIN
		}
		if err := s.wait(slot, deadline, int(ops[blocked].Num), kind); err != nil {
			return err
		}
	}
	for _, op := range ops {
		n := int(op.Num)
		atomic.AddInt32(s.semVal(n), int32(op.Delta))
		atomic.StoreInt32(s.semPID(n), c.PID)
		if op.Flags&Undo != 0 {
			*s.adj(slot, n) -= op.Delta
		}
	}
	atomic.StoreInt64(s.i64(offSTime), now())
	atomic.StoreInt32(s.i32(offLSPID), c.PID)
	s.changed()
	s.unlockWake()
	return nil
}

// try checks ops against the values, with the mutex held: it returns -1 if
// they all apply, or the first that must wait and for what.
func (s *Segment) try(slot int, ops []SemOp) (blocked, kind int, err error) {
	for n, op := range ops {
		k := int(op.Num)
		// Operations may name one semaphore more than once: each sees the
		// ones before it applied. Sets of operations are short, so a scan
		// beats a map here.
		v, a := atomic.LoadInt32(s.semVal(k)), int32(*s.adj(slot, k))
		for _, prev := range ops[:n] {
			if prev.Num == op.Num {
				v += int32(prev.Delta)
				if prev.Flags&Undo != 0 {
					a -= int32(prev.Delta)
				}
			}
		}
		switch {
		case op.Delta == 0 && v != 0:
			return n, waitZero, nil
		case op.Delta < 0 && v+int32(op.Delta) < 0:
			return n, waitIncrease, nil
		case v+int32(op.Delta) > SemValueMax:
			return 0, 0, unix.ERANGE
		}
		if a -= int32(op.Delta); op.Flags&Undo != 0 && (a < -SemValueMax-1 || a > SemValueMax) {
			return 0, 0, unix.ERANGE
		}
	}
	return -1, 0, nil
}

// Value is semctl GETVAL.
func (s *Segment) Value(c Cred, n int) (int, error) {
	if err := s.semCheck(c, n, AccessRead); err != nil {
		return 0, err
	}
	return int(atomic.LoadInt32(s.semVal(n))), nil
}

// Values is semctl GETALL.
func (s *Segment) Values(c Cred) ([]int, error) {
	if err := s.semCheck(c, 0, AccessRead); err != nil {
		return nil, err
	}
	out := make([]int, s.nsems)
	for n := range out {
		out[n] = int(atomic.LoadInt32(s.semVal(n)))
	}
	return out, nil
}

// LastPID is semctl GETPID: the global PID of the last process to change n.
func (s *Segment) LastPID(c Cred, n int) (int32, error) {
	if err := s.semCheck(c, n, AccessRead); err != nil {
		return 0, err
	}
	return atomic.LoadInt32(s.semPID(n)), nil
}

// Waiting is semctl GETNCNT (waitIncrease) or GETZCNT (waitZero): how many
// processes wait for semaphore n to rise, or to reach zero.
func (s *Segment) Waiting(c Cred, n int, zero bool) (int, error) {
	if err := s.semCheck(c, n, AccessRead); err != nil {
		return 0, err
	}
	kind := uint32(waitIncrease)
	if zero {
		kind = waitZero
	}
	count := 0
	for slot := range sessionsPerID {
		base := s.slotOff(slot)
		if atomic.LoadUint32(s.u32(base+slotInUse)) == 0 {
			continue
		}
		for e := range slotWaitMax {
			if atomic.LoadUint32(s.u32(base+slotWaits+8*e)) == uint32(n)+1 && atomic.LoadUint32(s.u32(base+slotWaits+8*e+4)) == kind {
				count++
			}
		}
	}
	return count, nil
}

// SetValue is semctl SETVAL.
func (s *Segment) SetValue(slot int, c Cred, n, v int) error {
	return s.setValues(slot, c, n, []int{v})
}

// SetValues is semctl SETALL.
func (s *Segment) SetValues(slot int, c Cred, vals []int) error {
	if len(vals) != s.nsems {
		return unix.EINVAL
	}
	return s.setValues(slot, c, 0, vals)
}

// setValues sets the semaphores from first on to vals and, as Linux does,
// clears every process's adjustment of them.
func (s *Segment) setValues(slot int, c Cred, first int, vals []int) error {
	if err := s.semCheck(c, first, AccessWrite); err != nil {
		return err
	}
	for _, v := range vals {
		if v < 0 || v > SemValueMax {
			return unix.ERANGE
		}
	}
	if err := s.enter(slot, c, AccessWrite); err != nil {
		return err
	}
	for i, v := range vals {
		n := first + i
		atomic.StoreInt32(s.semVal(n), int32(v))
		atomic.StoreInt32(s.semPID(n), c.PID)
		for other := range sessionsPerID {
			*s.adj(other, n) = 0
		}
	}
	atomic.StoreInt64(s.i64(offCTime), now())
	s.changed()
	s.unlockWake()
	return nil
}

func (s *Segment) semCheck(c Cred, n int, want uint32) error {
	if s.kind != KindSem {
		return unix.EINVAL
	}
	if err := s.removedError(); err != nil {
		return err
	}
	if n < 0 || n >= s.nsems {
		return unix.EINVAL
	}
	if !s.perm().Allows(c, want) {
		return unix.EACCES
	}
	return nil
}

// undo applies a session's adjustments (SEM_UNDO at exit), each value kept
// within 0 and SemValueMax as Linux keeps it, with the mutex held.
func (s *Segment) undo(slot int) {
	for n := range s.nsems {
		a := s.adj(slot, n)
		if *a == 0 {
			continue
		}
		v := atomic.LoadInt32(s.semVal(n)) + int32(*a)
		v = min(max(v, 0), SemValueMax)
		atomic.StoreInt32(s.semVal(n), v)
		*a = 0
	}
}
