package bench

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc"
	"github.com/smpc-cluster/smpc/internal/ipc"
)

// pingText is the size of a ping-pong message's text.
const pingText = 64

// queue is a message queue of the caller's own IPC namespace: in an OSlet
// the cluster's, on the host the host's. Both sides of a comparison run the
// same system calls, as an unmodified program would; only the namespace
// differs.
type queue struct{ id int32 }

func (q queue) send(mtype int64, text []byte) error { return ipc.MsgSend(q.id, mtype, text, 0) }

func (q queue) recv(mtype int64) (int64, error) {
	t, _, err := ipc.MsgReceive(q.id, mtype, pingText, 0)
	return t, err
}

// Ping-pong message types: a ping, the end, and the answer. The answering
// end takes types up to typeEnd, so it never takes its own answers.
const (
	typePing = 1
	typeEnd  = 2
	typePong = 3
)

// msgPingPong is one end of a message ping-pong on one queue. The ping end
// sends type 1 and waits for type 2, -n times, then sends type 3 and
// reports; the pong end answers each ping until the end.
func msgPingPong(fs *flag.FlagSet, args []string) error {
	role := fs.String("role", "ping", "ping or pong")
	key := fs.String("key", "", "the queue's key")
	n := fs.Int("n", DefaultCalls, "round trips")
	if err := fs.Parse(args); err != nil {
		return err
	}
	k, err := smpc.ParseIPCKey(*key)
	if err != nil {
		return err
	}
	id, err := ipc.MsgGet(k, 0)
	if err != nil {
		return err
	}
	q := queue{id}
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
	if err := fs.Parse(args); err != nil {
		return err
	}
	k, err := smpc.ParseIPCKey(*key)
	if err != nil {
		return err
	}
	id, err := ipc.SemGet(k, 0, 0)
	if err != nil {
		return err
	}
	takeOp, giveOp := []ipc.SemOp{{Delta: -1}}, []ipc.SemOp{{Delta: 1}}
	take := func() error { return ipc.SemOps(id, takeOp, 0) }
	give := func() error { return ipc.SemOps(id, giveOp, 0) }
	step := func() (int64, error) {
		for range 1024 {
			if err := take(); err != nil {
				return 0, err
			}
			if err := give(); err != nil {
				return 0, err
			}
		}
		return 2048, nil
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
	// The host's own IPC namespace holds the native side's queue.
	nq, err := ipc.MsgGet(key, unix.IPC_CREAT|unix.IPC_EXCL|0o600)
	if err != nil {
		return Result{}, fmt.Errorf("bench msg-pingpong: native: %w", err)
	}
	defer ipc.Remove(ipc.KindMsg, nq)

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

		nativePong := exec.CommandContext(ctx, r.Binary, "bench-helper", "--cpus", cpus[1], "msg-pingpong", "--role", "pong", "--key", keyArg)
		nativePong.Stderr = os.Stderr
		if err := nativePong.Start(); err != nil {
			return Result{}, err
		}
		count, ns, err = r.helperPinned(ctx, cpus[0], "msg-pingpong", "--key", keyArg, "-n", strconv.Itoa(n))
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
		Measure{fmt.Sprintf("msgsnd+msgrcv round trip between host processes, CPUs %s to %s", cpus[0], cpus[1]), native, "ns/op"}, 1.1), nil
}

// SemOp times an uncontended semaphore operation inside an OSlet, on a set
// of the cluster's, beside semop on a set of the host's, pinned to the same
// CPUs.
func (r *Runner) SemOp(ctx context.Context, d time.Duration) (Result, error) {
	a, _, err := r.pair()
	if err != nil {
		return Result{}, err
	}
	cpus, err := r.cpusOf(ctx, a)
	if err != nil {
		return Result{}, err
	}
	key := benchKey(2)
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
	sems, err := ipc.SemGet(key, 1, unix.IPC_CREAT|unix.IPC_EXCL|0o600)
	if err != nil {
		return Result{}, fmt.Errorf("bench semop: native: %w", err)
	}
	defer ipc.Remove(ipc.KindSem, sems)
	if err := ipc.SemSetVal(sems, 0, 1); err != nil {
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
		count, ns, err = r.helperPinned(ctx, cpus[0], loop...)
		if err != nil {
			return Result{}, fmt.Errorf("bench semop: native: %w", err)
		}
		native = minPositive(native, ns/count)
	}
	return compare("semop",
		Measure{fmt.Sprintf("uncontended semop in oslet %d, set made from the host", a), inside, "ns/op"},
		Measure{fmt.Sprintf("semop on the host, CPUs %s", cpus[0]), native, "ns/op"}, 1.1), nil
}

// minPositive keeps the best (lowest) cost seen; 0 means none yet.
func minPositive(best, v float64) float64 {
	if best == 0 || v < best {
		return v
	}
	return best
}
