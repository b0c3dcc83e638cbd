package ipc

import (
	"encoding/binary"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// A queue keeps its messages in a ring, oldest first. A message received
// from the middle (by type) is marked dead and its space comes back when the
// records before it go; when the ring cannot take a message that the byte
// limit allows, the live records are moved together.

func recordSize(text int) int { return align(ringRecord+text, ringRecord) }

type record struct {
	pos, size, textLen int
	state              uint32
	mtype              int64
}

func (s *Segment) recordAt(pos int) record {
	b := s.mem[s.offRing+pos:]
	return record{
		pos: pos, size: int(binary.NativeEndian.Uint32(b)), textLen: int(binary.NativeEndian.Uint32(b[4:])),
		state: binary.NativeEndian.Uint32(b[8:]), mtype: int64(binary.NativeEndian.Uint64(b[16:])),
	}
}

func (s *Segment) writeRecord(pos int, state uint32, mtype int64, text []byte, size int) {
	b := s.mem[s.offRing+pos:]
	binary.NativeEndian.PutUint32(b, uint32(size))
	binary.NativeEndian.PutUint32(b[4:], uint32(len(text)))
	binary.NativeEndian.PutUint32(b[8:], state)
	binary.NativeEndian.PutUint64(b[16:], uint64(mtype))
	copy(b[ringRecord:], text)
}

func (s *Segment) setState(pos int, state uint32) {
	binary.NativeEndian.PutUint32(s.mem[s.offRing+pos+8:], state)
}

// records calls f for each live record, oldest first, until f says stop.
func (s *Segment) records(f func(r record) bool) {
	size := int(*s.u64(offRingSize))
	pos, left := int(*s.u64(offHead)), int(*s.u64(offUsed))
	for left > 0 {
		r := s.recordAt(pos)
		if r.state == recLive && !f(r) {
			return
		}
		left -= r.size
		pos = (pos + r.size) % size
	}
}

// append places a record at the ring's tail, wrapping with a pad record
// and compacting when needed; it says false when the ring has no room.
func (s *Segment) append(mtype int64, text []byte) bool {
	size := int(*s.u64(offRingSize))
	need := recordSize(len(text))
	for try := 0; try < 2; try++ {
		head, used := int(*s.u64(offHead)), int(*s.u64(offUsed))
		tail := (head + used) % size
		pad := 0
		if tail+need > size {
			pad = size - tail
		}
		if used+pad+need <= size {
			if pad > 0 {
				s.writeRecord(tail, recPad, 0, nil, pad)
				tail = 0
			}
			s.writeRecord(tail, recLive, mtype, text, need)
			*s.u64(offUsed) = uint64(used + pad + need)
			return true
		}
		s.compact()
	}
	return false
}

// compact moves the live records to the start of the ring, in order.
func (s *Segment) compact() {
	var live []byte
	s.records(func(r record) bool {
		b := s.mem[s.offRing+r.pos : s.offRing+r.pos+r.size]
		live = append(live, b...)
		return true
	})
	copy(s.mem[s.offRing:], live)
	*s.u64(offHead), *s.u64(offUsed) = 0, uint64(len(live))
}

// trimHead returns the space of dead and pad records at the head.
func (s *Segment) trimHead() {
	size := int(*s.u64(offRingSize))
	for *s.u64(offUsed) > 0 {
		r := s.recordAt(int(*s.u64(offHead)))
		if r.state == recLive {
			return
		}
		*s.u64(offHead) = uint64((r.pos + r.size) % size)
		*s.u64(offUsed) -= uint64(r.size)
	}
	*s.u64(offHead) = 0
}

// Send is msgsnd(2) for the process attached as session slot.
func (s *Segment) Send(slot int, c Cred, mtype int64, text []byte, flags int) error {
	if mtype < 1 || len(text) > MsgMax {
		return unix.EINVAL
	}
	if err := s.enter(slot, c, AccessWrite); err != nil {
		return err
	}
	for {
		qbytes, cbytes, qnum := *s.u64(offQBytes), *s.u64(offCBytes), *s.u64(offQNum)
		if cbytes+uint64(len(text)) <= qbytes && qnum+1 <= qbytes && s.append(mtype, text) {
			break
		}
		if flags&NoWait != 0 {
			s.unlock()
			return unix.EAGAIN
		}
		if err := s.wait(slot, time.Time{}, 0, 0); err != nil {
			return err
		}
	}
	atomic.AddUint64(s.u64(offCBytes), uint64(len(text)))
	atomic.AddUint64(s.u64(offQNum), 1)
	atomic.StoreInt32(s.i32(offLSPID), c.PID)
	atomic.StoreInt64(s.i64(offSTime), now())
	s.changed()
	s.unlockWake()
	return nil
}

// Receive is msgrcv(2): it returns the message's type and text (at most max
// bytes; a longer message is E2BIG unless NoError truncates it).
func (s *Segment) Receive(slot int, c Cred, mtype int64, max int, flags int) (int64, []byte, error) {
	if max < 0 {
		return 0, nil, unix.EINVAL
	}
	if err := s.enter(slot, c, AccessRead); err != nil {
		return 0, nil, err
	}
	for {
		r, ok := s.find(mtype, flags)
		if ok {
			if r.textLen > max && flags&NoError == 0 {
				s.unlock()
				return 0, nil, unix.E2BIG
			}
			n := min(r.textLen, max)
			text := make([]byte, n)
			copy(text, s.mem[s.offRing+r.pos+ringRecord:])
			s.setState(r.pos, recDead)
			s.trimHead()
			atomic.AddUint64(s.u64(offCBytes), ^uint64(r.textLen-1))
			atomic.AddUint64(s.u64(offQNum), ^uint64(0))
			atomic.StoreInt32(s.i32(offLRPID), c.PID)
			atomic.StoreInt64(s.i64(offRTime), now())
			s.changed()
			s.unlockWake()
			return r.mtype, text, nil
		}
		if flags&NoWait != 0 {
			s.unlock()
			return 0, nil, unix.ENOMSG
		}
		if err := s.wait(slot, time.Time{}, 0, 0); err != nil {
			return 0, nil, err
		}
	}
}

// find picks the message msgrcv(2) would: type 0 the oldest; a positive
// type the oldest of that type (with Except, of any other type); a negative
// type the oldest of the lowest type not above its absolute value.
func (s *Segment) find(mtype int64, flags int) (record, bool) {
	var best record
	found := false
	s.records(func(r record) bool {
		switch {
		case mtype == 0:
			best, found = r, true
			return false
		case mtype > 0 && flags&Except == 0:
			if r.mtype == mtype {
				best, found = r, true
				return false
			}
		case mtype > 0:
			if r.mtype != mtype {
				best, found = r, true
				return false
			}
		default:
			if r.mtype <= -mtype && (!found || r.mtype < best.mtype) {
				best, found = r, true
			}
		}
		return true
	})
	return best, found
}
