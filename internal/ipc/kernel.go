package ipc

import (
	"encoding/binary"
	"fmt"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// semctl commands, with Linux's values.
const (
	semGetPID  = 11
	semGetVal  = 12
	semGetAll  = 13
	semGetNCnt = 14
	semGetZCnt = 15
	semSetVal  = 16
	semSetAll  = 17
)

func call(trap uintptr, a ...uintptr) (uintptr, error) {
	var args [6]uintptr
	copy(args[:], a)
	for {
		r, _, errno := unix.Syscall6(trap, args[0], args[1], args[2], args[3], args[4], args[5])
		switch errno {
		case 0:
			return r, nil
		case unix.EINTR:
			// Go's own signals (preemption) must not fail a blocked call;
			// the kernel restarts nothing here, so retry it.
			continue
		}
		return 0, errno
	}
}

// MsgGet is msgget(2).
func MsgGet(key int32, flags int) (int32, error) {
	id, err := call(unix.SYS_MSGGET, uintptr(key), uintptr(flags))
	return int32(id), err
}

// MsgSend is msgsnd(2).
func MsgSend(id int32, mtype int64, text []byte, flags int) error {
	buf := make([]byte, 8+len(text))
	binary.NativeEndian.PutUint64(buf, uint64(mtype))
	copy(buf[8:], text)
	_, err := call(unix.SYS_MSGSND, uintptr(id), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(text)), uintptr(flags))
	return err
}

// MsgReceive is msgrcv(2) into a text of at most max bytes.
func MsgReceive(id int32, mtype int64, max, flags int) (int64, []byte, error) {
	buf := make([]byte, 8+max)
	n, err := call(unix.SYS_MSGRCV, uintptr(id), uintptr(unsafe.Pointer(&buf[0])), uintptr(max), uintptr(mtype), uintptr(flags))
	if err != nil {
		return 0, nil, err
	}
	return int64(binary.NativeEndian.Uint64(buf)), buf[8 : 8+n], nil
}

// SemGet is semget(2).
func SemGet(key int32, nsems, flags int) (int32, error) {
	id, err := call(unix.SYS_SEMGET, uintptr(key), uintptr(nsems), uintptr(flags))
	return int32(id), err
}

// SemOp is one operation of semop(2), as struct sembuf: add Delta to
// semaphore Num, block while that would go below zero, or with Delta 0 wait
// for zero. Flags take NoWait and Undo.
type SemOp struct {
	Num   uint16 `json:"num"`
	Delta int16  `json:"delta"`
	Flags int16  `json:"flags,omitempty"`
}

// SemOps is semtimedop(2): every operation at once or none; timeout 0
// waits for ever.
func SemOps(id int32, ops []SemOp, timeout time.Duration) error {
	if len(ops) == 0 {
		return nil
	}
	if timeout <= 0 {
		_, err := call(unix.SYS_SEMTIMEDOP, uintptr(id), uintptr(unsafe.Pointer(&ops[0])), uintptr(len(ops)), 0)
		return err
	}
	// A signal interrupts the wait; the retry waits only for what is left.
	deadline := time.Now().Add(timeout)
	for {
		spec := unix.NsecToTimespec(max(time.Until(deadline), 0).Nanoseconds())
		_, _, errno := unix.Syscall6(unix.SYS_SEMTIMEDOP, uintptr(id), uintptr(unsafe.Pointer(&ops[0])), uintptr(len(ops)), uintptr(unsafe.Pointer(&spec)), 0, 0)
		switch errno {
		case 0:
			return nil
		case unix.EINTR:
			continue
		}
		return errno
	}
}

func semctl(id int32, num, cmd int, arg uintptr) (int, error) {
	r, err := call(unix.SYS_SEMCTL, uintptr(id), uintptr(num), uintptr(cmd), arg)
	return int(r), err
}

// SemGetVal is semctl GETVAL.
func SemGetVal(id int32, num int) (int, error) { return semctl(id, num, semGetVal, 0) }

// SemGetPID is semctl GETPID: the last process to operate on semaphore num,
// as the caller's PID namespace numbers it.
func SemGetPID(id int32, num int) (int, error) { return semctl(id, num, semGetPID, 0) }

// SemGetNCnt is semctl GETNCNT: how many wait for the value to grow.
func SemGetNCnt(id int32, num int) (int, error) { return semctl(id, num, semGetNCnt, 0) }

// SemGetZCnt is semctl GETZCNT: how many wait for it to be zero.
func SemGetZCnt(id int32, num int) (int, error) { return semctl(id, num, semGetZCnt, 0) }

// SemSetVal is semctl SETVAL.
func SemSetVal(id int32, num, v int) error {
	_, err := semctl(id, num, semSetVal, uintptr(v))
	return err
}

// SemGetAll is semctl GETALL for a set of nsems.
func SemGetAll(id int32, nsems int) ([]int, error) {
	if nsems <= 0 {
		return nil, nil
	}
	raw := make([]uint16, nsems)
	if _, err := semctl(id, 0, semGetAll, uintptr(unsafe.Pointer(&raw[0]))); err != nil {
		return nil, err
	}
	vals := make([]int, nsems)
	for n, v := range raw {
		vals[n] = int(v)
	}
	return vals, nil
}

// SemSetAll is semctl SETALL; vals must cover the whole set.
func SemSetAll(id int32, vals []int) error {
	if len(vals) == 0 {
		return nil
	}
	raw := make([]uint16, len(vals))
	for n, v := range vals {
		if v < 0 || v > SemValueMax {
			return fmt.Errorf("semaphore %d: value %d: %w", n, v, unix.ERANGE)
		}
		raw[n] = uint16(v)
	}
	_, err := semctl(id, 0, semSetAll, uintptr(unsafe.Pointer(&raw[0])))
	return err
}

// Remove is IPC_RMID on an object.
func Remove(kind Kind, id int32) error {
	var err error
	switch kind {
	case KindMsg:
		_, err = call(unix.SYS_MSGCTL, uintptr(id), unix.IPC_RMID, 0)
	case KindSem:
		_, err = semctl(id, 0, unix.IPC_RMID, 0)
	case KindShm:
		_, err = unix.SysvShmCtl(int(id), unix.IPC_RMID, nil)
	default:
		err = unix.EINVAL
	}
	return err
}
