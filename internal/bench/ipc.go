package bench

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc"
)

// The native sides call the kernel's System V IPC directly: x/sys/unix
// wraps the shared-memory calls but not msgget, msgsnd, msgrcv, semget,
// semop and semctl, and a C helper would need cgo for four system calls.

// sysv calls a System V IPC system call and turns its errno into an error.
func sysv(trap uintptr, a ...uintptr) (uintptr, error) {
	var args [5]uintptr
	copy(args[:], a)
	r, _, errno := unix.Syscall6(trap, args[0], args[1], args[2], args[3], args[4], 0)
	if errno != 0 {
		return 0, errno
	}
	return r, nil
}

// semSetVal is semctl's SETVAL command.
const semSetVal = 16

// pingText is the size of a ping-pong message's text.
const pingText = 64

// msgBuf is struct msgbuf with room for one ping.
type msgBuf struct {
	mtype int64
	text  [pingText]byte
}

// queue is one end's view of a message queue: the kernel's or smpc's.
type queue interface {
	send(mtype int64, text []byte) error
	recv(mtype int64) (int64, error)
}

type nativeQueue struct {
	id  uintptr
	buf msgBuf
}

func (q *nativeQueue) send(mtype int64, text []byte) error {
	q.buf.mtype = mtype
	n := copy(q.buf.text[:], text)
	_, err := sysv(unix.SYS_MSGSND, q.id, uintptr(unsafe.Pointer(&q.buf)), uintptr(n), 0)
	return err
}

func (q *nativeQueue) recv(mtype int64) (int64, error) {
	_, err := sysv(unix.SYS_MSGRCV, q.id, uintptr(unsafe.Pointer(&q.buf)), pingText, uintptr(mtype), 0)
	return q.buf.mtype, err
}

type smpcQueue struct{ q *smpc.MsgQueue }

func (q smpcQueue) send(mtype int64, text []byte) error { return q.q.Send(mtype, text, 0) }
func (q smpcQueue) recv(mtype int64) (int64, error) {
	t, _, err := q.q.Receive(mtype, pingText, 0)
	return t, err
}

// Ping-pong message types: a ping, its answer, and the end.
const (
	typePing = 1
	typePong = 2
	typeEnd  = 3
)

// msgPingPong is one end of a message ping-pong on one queue. The ping end
// sends type 1 and waits for type 2, -n times, then sends type 3 and
// reports; the pong end answers each ping until the end.
func msgPingPong(fs *flag.FlagSet, args []string) error {
	role := fs.String("role", "ping", "ping or pong")
	key := fs.String("key", "", "the queue's key")
	n := fs.Int("n", DefaultCalls, "round trips")
	native := fs.Bool("native", false, "use the kernel's queue instead of the cluster's")
	if err := fs.Parse(args); err != nil {
		return err
	}
	k, err := smpc.ParseIPCKey(*key)
	if err != nil {
		return err
	}
	var q queue
	if *native {
		id, err := sysv(unix.SYS_MSGGET, uintptr(k), 0)
		if err != nil {
			return fmt.Errorf("msgget %s: %w", *key, err)
		}
		q = &nativeQueue{id: id}
	} else {
		c, err := smpc.Connect("")
		if err != nil {
			return err
		}
		defer c.Close()
		mq, err := c.MsgGet(context.Background(), k, 0)
		if err != nil {
			return err
		}
		defer mq.Close()
		q = smpcQueue{mq}
	}
	text := make([]byte, pingText)
	if *role == "pong" {
		start := time.Now()
		for count := int64(0); ; count++ {
			t, err := q.recv(-typeEnd)
			if err != nil {
				return err
			}
			if t == typeEnd {
				report(count, time.Since(start))
				return nil
			}
			if err := q.send(typePong, text); err != nil {
				return err
			}
		}
	}
	start := time.Now()
	for range *n {
		if err := q.send(typePing, text); err != nil {
			return err
		}
		if _, err := q.recv(typePong); err != nil {
			return err
		}
	}
	took := time.Since(start)
	if err := q.send(typeEnd, text); err != nil {
		return err
	}
	report(int64(*n), took)
	return nil
}

// semLoop takes and gives back a semaphore of value 1 for a while, nobody
// else using it, and reports the operations.
func semLoop(fs *flag.FlagSet, args []string) error {
	key := fs.String("key", "", "the set's key")
	d := fs.Duration("for", DefaultLoopTime, "how long to loop")
	native := fs.Bool("native", false, "use the kernel's semaphore instead of the cluster's")
	if err := fs.Parse(args); err != nil {
		return err
	}
	k, err := smpc.ParseIPCKey(*key)
	if err != nil {
		return err
	}
	var step func() (int64, error)
	if *native {
		id, err := sysv(unix.SYS_SEMGET, uintptr(k), 0, 0)
		if err != nil {
			return fmt.Errorf("semget %s: %w", *key, err)
		}
		take, give := []smpc.SemOp{{Delta: -1}}, []smpc.SemOp{{Delta: 1}}
		step = func() (int64, error) {
			for range 1024 {
				// smpc.SemOp has struct sembuf's layout.
				if _, err := sysv(unix.SYS_SEMOP, id, uintptr(unsafe.Pointer(&take[0])), 1); err != nil {
					return 0, err
				}
				if _, err := sysv(unix.SYS_SEMOP, id, uintptr(unsafe.Pointer(&give[0])), 1); err != nil {
					return 0, err
				}
			}
			return 2048, nil
		}
	} else {
		c, err := smpc.Connect("")
		if err != nil {
			return err
		}
		defer c.Close()
		s, err := c.SemGet(context.Background(), k, 0, 0)
		if err != nil {
			return err
		}
		defer s.Close()
		take, give := smpc.SemOp{Delta: -1}, smpc.SemOp{Delta: 1}
		step = func() (int64, error) {
			for range 1024 {
				if err := s.Op(take); err != nil {
					return 0, err
				}
				if err := s.Op(give); err != nil {
					return 0, err
				}
			}
			return 2048, nil
		}
	}
	return timedLoop(*d, step)
}

// benchKey makes a key for a benchmark's objects that no other run of this
// process uses.
func benchKey(kind int) int32 { return int32(0x53500000 | kind<<16 | os.Getpid()&0xffff) }

// MsgPingPong times a round trip of a 64-byte message through one message
// queue between processes on two OSlets, beside the same ping-pong through
// a kernel queue between two host processes pinned to the same CPUs.
func (r *Runner) MsgPingPong(ctx context.Context, n int) (Result, error) {
	a, b, err := r.pair()
	if err != nil {
		return Result{}, err
	}
	cpus, err := r.cpusOf(ctx, a, b)
	if err != nil {
		return Result{}, err
	}
	key := benchKey(1)
	keyArg := strconv.Itoa(int(key))
	q, err := r.Client.MsgGet(ctx, key, smpc.IPCCreate|smpc.IPCExcl|0o600)
	if err != nil {
		return Result{}, fmt.Errorf("bench msg-pingpong: %w", err)
	}
	defer q.Close()
	defer q.Remove(context.Background())
	nativeID, err := sysv(unix.SYS_MSGGET, uintptr(key), unix.IPC_CREAT|unix.IPC_EXCL|0o600)
	if err != nil {
		return Result{}, fmt.Errorf("bench msg-pingpong: native msgget: %w", err)
	}
	defer sysv(unix.SYS_MSGCTL, nativeID, unix.IPC_RMID, 0)

	var inside, native float64
	for i := 0; i < Reps; i++ {
		pong := r.Client.Command(r.Binary, "bench-helper", "msg-pingpong", "--role", "pong", "--key", keyArg)
		pong.OSlet = b
		pongDone, err := r.start(ctx, pong)
		if err != nil {
			return Result{}, fmt.Errorf("bench msg-pingpong: oslet %d: %w", b, err)
		}
		count, ns, err := r.helperOn(ctx, a, "msg-pingpong", "--key", keyArg, "-n", strconv.Itoa(n))
		_, _, perr := pongDone()
		if err != nil {
			return Result{}, fmt.Errorf("bench msg-pingpong: oslet %d: %w", a, err)
		}
		if perr != nil {
			return Result{}, fmt.Errorf("bench msg-pingpong: oslet %d: %w", b, perr)
		}
		inside = minPositive(inside, ns/count)

		nativePong := exec.CommandContext(ctx, r.Binary, "bench-helper", "--cpus", cpus[1], "msg-pingpong", "--native", "--role", "pong", "--key", keyArg)
		nativePong.Stderr = os.Stderr
		if err := nativePong.Start(); err != nil {
			return Result{}, err
		}
		count, ns, err = r.helperPinned(ctx, cpus[0], "msg-pingpong", "--native", "--key", keyArg, "-n", strconv.Itoa(n))
		perr = nativePong.Wait()
		if err != nil {
			return Result{}, fmt.Errorf("bench msg-pingpong: native: %w", err)
		}
		if perr != nil {
			return Result{}, fmt.Errorf("bench msg-pingpong: native pong: %w", perr)
		}
		native = minPositive(native, ns/count)
	}
	return compare("msg-pingpong",
		Measure{fmt.Sprintf("msgsnd+msgrcv round trip, oslet %d to oslet %d", a, b), inside, "ns/op"},
		Measure{fmt.Sprintf("kernel msgsnd+msgrcv round trip, CPUs %s to %s", cpus[0], cpus[1]), native, "ns/op"}, 2), nil
}

// SemOp times an uncontended semaphore operation inside an OSlet, on a set
// homed on another OSlet, beside the kernel's semop on the host pinned to
// the same CPUs.
func (r *Runner) SemOp(ctx context.Context, d time.Duration) (Result, error) {
	a, b, err := r.pair()
	if err != nil {
		return Result{}, err
	}
	cpus, err := r.cpusOf(ctx, a)
	if err != nil {
		return Result{}, err
	}
	// A key homed on the other OSlet: the operation is cross-OSlet.
	key := benchKey(2)
	for smpc.IPCHomeOfKey(key, r.Client.OSlets()) != b {
		key++
	}
	keyArg := strconv.Itoa(int(key))
	s, err := r.Client.SemGet(ctx, key, 1, smpc.IPCCreate|smpc.IPCExcl|0o600)
	if err != nil {
		return Result{}, fmt.Errorf("bench semop: %w", err)
	}
	defer s.Close()
	defer s.Remove(context.Background())
	if err := s.SetVal(0, 1); err != nil {
		return Result{}, fmt.Errorf("bench semop: %w", err)
	}
	nativeID, err := sysv(unix.SYS_SEMGET, uintptr(key), 1, unix.IPC_CREAT|unix.IPC_EXCL|0o600)
	if err != nil {
		return Result{}, fmt.Errorf("bench semop: native semget: %w", err)
	}
	defer sysv(unix.SYS_SEMCTL, nativeID, 0, unix.IPC_RMID)
	if _, err := sysv(unix.SYS_SEMCTL, nativeID, 0, semSetVal, 1); err != nil {
		return Result{}, fmt.Errorf("bench semop: native SETVAL: %w", err)
	}
	loop := []string{"sem-loop", "--key", keyArg, "--for", d.String()}
	var inside, native float64
	for i := 0; i < LoopReps; i++ {
		count, ns, err := r.helperOn(ctx, a, loop...)
		if err != nil {
			return Result{}, fmt.Errorf("bench semop: oslet %d: %w", a, err)
		}
		inside = minPositive(inside, ns/count)
		count, ns, err = r.helperPinned(ctx, cpus[0], append(loop, "--native")...)
		if err != nil {
			return Result{}, fmt.Errorf("bench semop: native: %w", err)
		}
		native = minPositive(native, ns/count)
	}
	return compare("semop",
		Measure{fmt.Sprintf("uncontended semop in oslet %d, set homed on oslet %d", a, b), inside, "ns/op"},
		Measure{fmt.Sprintf("kernel semop on the host, CPUs %s", cpus[0]), native, "ns/op"}, 2), nil
}

// minPositive keeps the best (lowest) cost seen; 0 means none yet.
func minPositive(best, v float64) float64 {
	if best == 0 || v < best {
		return v
	}
	return best
}
