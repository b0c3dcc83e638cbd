// Package native calls the kernel's own System V message queues and
// semaphores: the native side that smpc's cluster-wide ones are measured
// against. x/sys/unix wraps the kernel's shared-memory calls but not
// msgget, msgsnd, msgrcv, semget, semop and semctl, and a C helper would
// need cgo for six system calls, so they are called here directly.
package native

import (
	"encoding/binary"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// semctl commands beyond IPC_RMID.
const semSetVal = 16

func call(trap uintptr, a ...uintptr) (uintptr, error) {
	var args [5]uintptr
	copy(args[:], a)
	r, _, errno := unix.Syscall6(trap, args[0], args[1], args[2], args[3], args[4], 0)
	if errno != 0 {
		return 0, errno
	}
	return r, nil
}

// Queue is a kernel message queue and a struct msgbuf to send and receive
// through.
type Queue struct {
	id  uintptr
	buf []byte // mtype (8 bytes), then the text
}

// OpenQueue is msgget(2); max bounds the texts this Queue moves.
func OpenQueue(key int32, flags, max int) (*Queue, error) {
	id, err := call(unix.SYS_MSGGET, uintptr(key), uintptr(flags))
	if err != nil {
		return nil, fmt.Errorf("msgget %#x: %w", uint32(key), err)
	}
	return &Queue{id: id, buf: make([]byte, 8+max)}, nil
}

// Send is msgsnd(2), blocking while the queue is full.
func (q *Queue) Send(mtype int64, text []byte) error {
	binary.NativeEndian.PutUint64(q.buf, uint64(mtype))
	n := copy(q.buf[8:], text)
	_, err := call(unix.SYS_MSGSND, q.id, uintptr(unsafe.Pointer(&q.buf[0])), uintptr(n), 0)
	return err
}

// Receive is msgrcv(2), blocking until a message of mtype comes; the text
// it returns is valid until the next call.
func (q *Queue) Receive(mtype int64) (int64, []byte, error) {
	n, err := call(unix.SYS_MSGRCV, q.id, uintptr(unsafe.Pointer(&q.buf[0])), uintptr(len(q.buf)-8), uintptr(mtype), 0)
	if err != nil {
		return 0, nil, err
	}
	return int64(binary.NativeEndian.Uint64(q.buf)), q.buf[8 : 8+n], nil
}

// Remove is msgctl IPC_RMID.
func (q *Queue) Remove() error {
	_, err := call(unix.SYS_MSGCTL, q.id, unix.IPC_RMID, 0)
	return err
}

// Sems is a kernel semaphore set.
type Sems struct{ id uintptr }

// sembuf is struct sembuf.
type sembuf struct {
	num   uint16
	delta int16
	flags int16
}

// OpenSems is semget(2).
func OpenSems(key int32, nsems, flags int) (*Sems, error) {
	id, err := call(unix.SYS_SEMGET, uintptr(key), uintptr(nsems), uintptr(flags))
	if err != nil {
		return nil, fmt.Errorf("semget %#x: %w", uint32(key), err)
	}
	return &Sems{id: id}, nil
}

// Op is semop(2) with one operation.
func (s *Sems) Op(num uint16, delta int16) error {
	op := sembuf{num: num, delta: delta}
	_, err := call(unix.SYS_SEMOP, s.id, uintptr(unsafe.Pointer(&op)), 1)
	return err
}

// SetVal is semctl SETVAL.
func (s *Sems) SetVal(n, v int) error {
	_, err := call(unix.SYS_SEMCTL, s.id, uintptr(n), semSetVal, uintptr(v))
	return err
}

// Remove is semctl IPC_RMID.
func (s *Sems) Remove() error {
	_, err := call(unix.SYS_SEMCTL, s.id, 0, unix.IPC_RMID)
	return err
}
