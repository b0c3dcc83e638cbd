package ipc

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc/internal/ipc/native"
)

var root = Cred{UID: 0, PID: 1}

// attach gets an object for token and maps it as a separate process would.
func attach(t *testing.T, r *Registry, req GetRequest) (*Segment, int) {
	t.Helper()
	res, f, err := r.Get(req)
	if err != nil {
		t.Fatalf("get %+v: %v", req, err)
	}
	if f == nil {
		t.Fatalf("get %+v: no descriptor", req)
	}
	seg, err := Map(f[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { seg.Unmap() })
	return seg, res.Slot
}

func TestMessageTypes(t *testing.T) {
	r := NewRegistry(1)
	defer r.Close()
	q, slot := attach(t, r, GetRequest{Kind: KindMsg, Key: 7, Flags: Create | 0o600, Cred: root, Token: 1})
	for _, m := range []struct {
		t    int64
		text string
	}{{3, "c"}, {1, "a1"}, {2, "b"}, {1, "a2"}, {5, "e"}} {
		if err := q.Send(slot, root, m.t, []byte(m.text), 0); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		mtype int64
		flags int
		want  string
	}{
		{1, 0, "a1"},       // oldest of type 1
		{-2, 0, "a2"},      // lowest type <= 2
		{2, Except, "c"},   // oldest not of type 2
		{0, 0, "b"},        // oldest
		{6, NoWait, "err"}, // none of type 6
		{0, 0, "e"},
	}
	for _, c := range cases {
		_, text, err := q.Receive(slot, root, c.mtype, 100, c.flags)
		if c.want == "err" {
			if !errors.Is(err, unix.ENOMSG) {
				t.Fatalf("receive type %d: %v, want ENOMSG", c.mtype, err)
			}
			continue
		}
		if err != nil || string(text) != c.want {
			t.Fatalf("receive type %d flags %o: %q %v, want %q", c.mtype, c.flags, text, err, c.want)
		}
	}
	if st := q.Stat(); st.QNum != 0 || st.CBytes != 0 {
		t.Fatalf("empty queue: %+v", st)
	}
}

func TestMessageTooLong(t *testing.T) {
	r := NewRegistry(1)
	defer r.Close()
	q, slot := attach(t, r, GetRequest{Kind: KindMsg, Key: 8, Flags: Create | 0o600, Cred: root, Token: 1})
	q.Send(slot, root, 1, []byte("0123456789"), 0)
	if _, _, err := q.Receive(slot, root, 0, 4, 0); !errors.Is(err, unix.E2BIG) {
		t.Fatalf("short buffer: %v, want E2BIG", err)
	}
	_, text, err := q.Receive(slot, root, 0, 4, NoError)
	if err != nil || string(text) != "0123" {
		t.Fatalf("NoError: %q %v", text, err)
	}
	if err := q.Send(slot, root, 0, nil, 0); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("type 0: %v, want EINVAL", err)
	}
}

// TestQueueFullBlocks fills a queue to its byte limit and checks that a
// sender blocks until a receiver makes room, through many wraps of the ring.
func TestQueueFullBlocks(t *testing.T) {
	r := NewRegistry(1)
	defer r.Close()
	get := GetRequest{Kind: KindMsg, Key: 9, Flags: Create | 0o600, Cred: root}
	get.Token = 1
	tx, txSlot := attach(t, r, get)
	get.Token = 2
	rx, rxSlot := attach(t, r, get)
	msg := make([]byte, 4000)
	for n := 0; n < 4; n++ {
		if err := tx.Send(txSlot, root, 1, msg, NoWait); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Send(txSlot, root, 1, msg, NoWait); !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("full queue, nowait: %v, want EAGAIN", err)
	}
	const total = 3000
	done := make(chan error, 1)
	go func() {
		for n := 4; n < total; n++ {
			text := fmt.Appendf(nil, "%06d", n)
			text = append(text, make([]byte, n%3000)...)
			if err := tx.Send(txSlot, root, int64(1+n%3), text, 0); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for n := 0; n < total; n++ {
		_, text, err := rx.Receive(rxSlot, root, 0, MsgMax, 0)
		if err != nil {
			t.Fatal(err)
		}
		if n >= 4 && string(text[:6]) != fmt.Sprintf("%06d", n) {
			t.Fatalf("message %d: got %q", n, text[:6])
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestRemoveWakesWaiters removes a queue and a set while processes sleep on
// them: each wakes with EIDRM.
func TestRemoveWakesWaiters(t *testing.T) {
	r := NewRegistry(1)
	defer r.Close()
	q, qs := attach(t, r, GetRequest{Kind: KindMsg, Key: 10, Flags: Create | 0o600, Cred: root, Token: 1})
	s, ss := attach(t, r, GetRequest{Kind: KindSem, Key: 10, NSems: 1, Flags: Create | 0o600, Cred: root, Token: 1})
	errs := make(chan error, 2)
	go func() { _, _, err := q.Receive(qs, root, 0, 10, 0); errs <- err }()
	go func() { errs <- s.Op(ss, root, []SemOp{{Num: 0, Delta: -1}}, time.Time{}) }()
	waitFor(t, func() bool { n, _ := s.Waiting(root, 0, false); return n == 1 })
	time.Sleep(20 * time.Millisecond)
	if err := r.Remove(KindMsg, q.ID(), root); err != nil {
		t.Fatal(err)
	}
	if err := r.Remove(KindSem, s.ID(), root); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case err := <-errs:
			if !errors.Is(err, unix.EIDRM) {
				t.Fatalf("woken by removal: %v, want EIDRM", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("waiter not woken by removal")
		}
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for range 500 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("condition not met in 5s")
}

// TestSemaphoreMutex uses a semaphore as a mutex around a counter in
// ordinary memory, from several sessions at once: the counter must be exact.
func TestSemaphoreMutex(t *testing.T) {
	r := NewRegistry(1)
	defer r.Close()
	const workers, rounds = 4, 2000
	var sets []*Segment
	var slots []int
	for w := range workers {
		s, slot := attach(t, r, GetRequest{Kind: KindSem, Key: 11, NSems: 1, Flags: Create | 0o600, Cred: root, Token: uint64(w + 1)})
		sets, slots = append(sets, s), append(slots, slot)
	}
	if err := sets[0].SetValue(slots[0], root, 0, 1); err != nil {
		t.Fatal(err)
	}
	// The counter is read and written in two steps: lost updates show
	// if two workers ever hold the mutex together. Atomics keep the race
	// detector, which cannot see the futex's ordering, quiet.
	var counter atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				if err := sets[w].Op(slots[w], root, []SemOp{{Delta: -1}}, time.Time{}); err != nil {
					t.Error(err)
					return
				}
				c := counter.Load()
				runtime.Gosched()
				counter.Store(c + 1)
				if err := sets[w].Op(slots[w], root, []SemOp{{Delta: 1}}, time.Time{}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if counter.Load() != workers*rounds {
		t.Fatalf("counter %d, want %d", counter.Load(), workers*rounds)
	}
}

func TestSemaphoreOps(t *testing.T) {
	r := NewRegistry(1)
	defer r.Close()
	s, slot := attach(t, r, GetRequest{Kind: KindSem, Key: 12, NSems: 3, Flags: Create | 0o600, Cred: root, Token: 1})
	steps := []struct {
		ops  []SemOp
		want error
		vals []int
	}{
		{[]SemOp{{Num: 0, Delta: 2}, {Num: 1, Delta: 1}}, nil, []int{2, 1, 0}},
		// all or nothing: the second would block, so the first does not apply
		{[]SemOp{{Num: 0, Delta: -1}, {Num: 2, Delta: -1, Flags: NoWait}}, unix.EAGAIN, []int{2, 1, 0}},
		{[]SemOp{{Num: 2, Delta: 0}}, nil, []int{2, 1, 0}}, // zero already
		{[]SemOp{{Num: 1, Delta: 0, Flags: NoWait}}, unix.EAGAIN, []int{2, 1, 0}},
		{[]SemOp{{Num: 0, Delta: -1}, {Num: 0, Delta: -1}}, nil, []int{0, 1, 0}}, // one semaphore twice
		{[]SemOp{{Num: 3, Delta: 1}}, unix.EFBIG, []int{0, 1, 0}},
		{[]SemOp{{Num: 0, Delta: 32767}, {Num: 0, Delta: 1}}, unix.ERANGE, []int{0, 1, 0}},
	}
	for n, st := range steps {
		err := s.Op(slot, root, st.ops, time.Time{})
		if !errors.Is(err, st.want) && !(err == nil && st.want == nil) {
			t.Fatalf("step %d: %v, want %v", n, err, st.want)
		}
		vals, _ := s.Values(root)
		if fmt.Sprint(vals) != fmt.Sprint(st.vals) {
			t.Fatalf("step %d: values %v, want %v", n, vals, st.vals)
		}
	}
	start := time.Now()
	err := s.Op(slot, root, []SemOp{{Num: 0, Delta: -1}}, time.Now().Add(50*time.Millisecond))
	if !errors.Is(err, unix.EAGAIN) || time.Since(start) < 40*time.Millisecond {
		t.Fatalf("timed op: %v after %v, want EAGAIN after 50ms", err, time.Since(start))
	}
}

// TestUndoOnRelease checks SEM_UNDO: a session that ends (its process
// died) has its adjustments applied, and a sleeper it left is not counted.
func TestUndoOnRelease(t *testing.T) {
	r := NewRegistry(1)
	defer r.Close()
	a, as := attach(t, r, GetRequest{Kind: KindSem, Key: 13, NSems: 2, Flags: Create | 0o600, Cred: root, Token: 1})
	b, bs := attach(t, r, GetRequest{Kind: KindSem, Key: 13, Cred: root, Token: 2})
	if err := a.SetValues(as, root, []int{1, 0}); err != nil {
		t.Fatal(err)
	}
	if err := b.Op(bs, root, []SemOp{{Num: 0, Delta: -1, Flags: Undo}, {Num: 1, Delta: 5, Flags: Undo}}, time.Time{}); err != nil {
		t.Fatal(err)
	}
	// b also sleeps, then "dies": release must take its sleeper out.
	slept := make(chan error, 1)
	go func() { slept <- b.Op(bs, root, []SemOp{{Num: 0, Delta: -2}}, time.Time{}) }()
	waitFor(t, func() bool { n, _ := a.Waiting(root, 0, false); return n == 1 })
	r.Release(2)
	if err := <-slept; !errors.Is(err, unix.EINVAL) {
		t.Fatalf("sleeper of a released session: %v, want EINVAL", err)
	}
	vals, _ := a.Values(root)
	if fmt.Sprint(vals) != "[1 0]" {
		t.Fatalf("after undo: %v, want [1 0]", vals)
	}
	if n, _ := a.Waiting(root, 0, false); n != 0 {
		t.Fatalf("GETNCNT after release: %d, want 0", n)
	}
	if st := r.List(); len(st) != 1 || st[0].Attached != 1 {
		t.Fatalf("list after release: %+v", st)
	}
}

// TestReleaseFreesDeadHolder checks that a session that dies holding the
// mutex does not stop the others.
func TestReleaseFreesDeadHolder(t *testing.T) {
	r := NewRegistry(1)
	defer r.Close()
	a, as := attach(t, r, GetRequest{Kind: KindSem, Key: 14, NSems: 1, Flags: Create | 0o600, Cred: root, Token: 1})
	b, bs := attach(t, r, GetRequest{Kind: KindSem, Key: 14, Cred: root, Token: 2})
	b.lock(uint32(bs) + 1) // and b dies here
	done := make(chan error, 1)
	go func() { done <- a.Op(as, root, []SemOp{{Delta: 1}}, time.Time{}) }()
	time.Sleep(20 * time.Millisecond)
	r.Release(2)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("mutex of a dead holder not freed")
	}
}

func TestPermissions(t *testing.T) {
	r := NewRegistry(1)
	defer r.Close()
	owner := Cred{UID: 1000, GID: 1000}
	other := Cred{UID: 1001, GID: 1001}
	group := Cred{UID: 1002, GID: 1002, Groups: []uint32{1000}}
	q, _ := attach(t, r, GetRequest{Kind: KindMsg, Key: 15, Flags: Create | 0o640, Cred: owner, Token: 1})
	if _, _, err := r.Get(GetRequest{Kind: KindMsg, Key: 15, Flags: 0o600, Cred: other, Token: 2}); !errors.Is(err, unix.EACCES) {
		t.Fatalf("other asks rw: %v, want EACCES", err)
	}
	res, f, err := r.Get(GetRequest{Kind: KindMsg, Key: 15, Cred: other, Token: 2})
	if err != nil || len(f) != 0 || res.Slot != -1 {
		t.Fatalf("other asks nothing: %+v %v %v, want an ID and no descriptor", res, f, err)
	}
	res, _, err = r.Get(GetRequest{Kind: KindMsg, Key: 15, Flags: 0o040, Cred: group, Token: 3})
	if err != nil {
		t.Fatalf("group asks read: %v", err)
	}
	if err := q.Send(res.Slot, group, 1, []byte("x"), 0); !errors.Is(err, unix.EACCES) {
		t.Fatalf("group sends: %v, want EACCES", err)
	}
	if err := r.Remove(KindMsg, q.ID(), other); !errors.Is(err, unix.EPERM) {
		t.Fatalf("other removes: %v, want EPERM", err)
	}
	if _, err := r.Set(KindMsg, q.ID(), owner, SetRequest{UID: 1000, GID: 1000, Mode: 0o600, QBytes: MsgQBytes * 2}); !errors.Is(err, unix.EPERM) {
		t.Fatalf("owner raises limit: %v, want EPERM", err)
	}
	if _, _, err := r.Get(GetRequest{Kind: KindMsg, Key: 15, Flags: Create | Excl, Cred: owner, Token: 1}); !errors.Is(err, unix.EEXIST) {
		t.Fatalf("create exclusive: %v, want EEXIST", err)
	}
	if _, _, err := r.Get(GetRequest{Kind: KindMsg, Key: 16, Cred: owner, Token: 1}); !errors.Is(err, unix.ENOENT) {
		t.Fatalf("missing key: %v, want ENOENT", err)
	}
}

func TestKeys(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int32
	}{{"0x1234", 0x1234}, {"4660", 4660}, {"0xffffffff", -1}, {"-1", -1}} {
		got, err := ParseKey(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseKey(%q) = %d, %v; want %d", c.in, got, err, c.want)
		}
	}
	if _, err := ParseKey("key"); err == nil {
		t.Error("ParseKey(key): no error")
	}
	oslets := []int{1, 2, 3, 4}
	seen := map[int]bool{}
	for key := int32(1); key < 100; key++ {
		seen[HomeOfKey(key, oslets)] = true
	}
	if len(seen) != 4 {
		t.Errorf("100 keys striped over %d of 4 OSlets", len(seen))
	}
}

// BenchmarkPingPong is the fast path's own cost: two sessions, two
// goroutines, a message each way per round.
// endpoint is one side's handle on a queue, the cluster's or the kernel's.
type endpoint struct {
	send func(mtype int64, text []byte) error
	recv func(mtype int64) (int64, error)
}

// timePingPong times n round trips from ping to a goroutine answering on
// pong: type 1 out, type 3 back, type 2 to end (the answerer takes types
// up to 2, never its own answers).
func timePingPong(n int, ping, pong endpoint) time.Duration {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			t, err := pong.recv(-2)
			if err != nil || t == 2 || pong.send(3, []byte("pong")) != nil {
				return
			}
		}
	}()
	start := time.Now()
	for range n {
		ping.send(1, []byte("ping"))
		ping.recv(3)
	}
	took := time.Since(start)
	ping.send(2, nil)
	<-done
	return took
}

// reportRatio reports both sides of a comparison made in one run.
func reportRatio(b *testing.B, n int, smpc, kernel time.Duration) {
	b.ReportMetric(float64(smpc.Nanoseconds())/float64(n), "smpc-ns/op")
	b.ReportMetric(float64(kernel.Nanoseconds())/float64(n), "native-ns/op")
	b.ReportMetric(float64(smpc)/float64(kernel), "ratio")
}

// BenchmarkPingPong: a round trip between two goroutines through a queue's
// segment vs through a kernel message queue, the same number of times.
func BenchmarkPingPong(b *testing.B) {
	r := NewRegistry(1)
	defer r.Close()
	res, f, _ := r.Get(GetRequest{Kind: KindMsg, Key: 20, Flags: Create | 0o600, Cred: root, Token: 1})
	q, _ := Map(f[0])
	defer q.Unmap()
	seg := endpoint{
		send: func(t int64, text []byte) error { return q.Send(res.Slot, root, t, text, 0) },
		recv: func(t int64) (int64, error) {
			got, _, err := q.Receive(res.Slot, root, t, 64, 0)
			return got, err
		},
	}
	key := int32(0x53490000 | os.Getpid()&0xffff)
	pingQ, err := native.OpenQueue(key, unix.IPC_CREAT|unix.IPC_EXCL|0o600, 64)
	if err != nil {
		b.Fatal(err)
	}
	defer pingQ.Remove()
	pongQ, _ := native.OpenQueue(key, 0, 64) // its own buffer, for the other goroutine
	kernel := func(nq *native.Queue) endpoint {
		return endpoint{send: nq.Send, recv: func(t int64) (int64, error) {
			got, _, err := nq.Receive(t)
			return got, err
		}}
	}
	reportRatio(b, b.N, timePingPong(b.N, seg, seg), timePingPong(b.N, kernel(pingQ), kernel(pongQ)))
}

// BenchmarkSemOp: an uncontended semaphore taken and given back through a
// set's segment vs the kernel's semop, the same number of times.
func BenchmarkSemOp(b *testing.B) {
	r := NewRegistry(1)
	defer r.Close()
	res, f, _ := r.Get(GetRequest{Kind: KindSem, Key: 21, NSems: 1, Flags: Create | 0o600, Cred: root, Token: 1})
	s, _ := Map(f[0])
	defer s.Unmap()
	sems, err := native.OpenSems(Private, 1, unix.IPC_CREAT|0o600)
	if err != nil {
		b.Fatal(err)
	}
	defer sems.Remove()
	up, down := []SemOp{{Delta: 1}}, []SemOp{{Delta: -1}}
	start := time.Now()
	for range b.N {
		s.Op(res.Slot, root, up, time.Time{})
		s.Op(res.Slot, root, down, time.Time{})
	}
	segment := time.Since(start)
	start = time.Now()
	for range b.N {
		sems.Op(0, 1)
		sems.Op(0, -1)
	}
	reportRatio(b, b.N, segment, time.Since(start))
}

// TestSharedMemorySegment checks shmget at the home: the segment's pages
// come as a second descriptor that every process maps to the same memory,
// a size past the home's free memory or past an existing segment's is
// refused, and removal ends it.
func TestSharedMemorySegment(t *testing.T) {
	r := NewRegistry(1)
	r.Free = func() int64 { return 1 << 20 }
	defer r.Close()
	if _, _, err := r.Get(GetRequest{Kind: KindShm, Key: 30, Size: 2 << 20, Flags: Create | 0o600, Cred: root, Token: 1}); !errors.Is(err, unix.ENOMEM) {
		t.Fatalf("a segment past the home's free memory: %v, want ENOMEM", err)
	}
	res, files, err := r.Get(GetRequest{Kind: KindShm, Key: 30, Size: 8192, Flags: Create | 0o600, Cred: root, Token: 1})
	if err != nil || len(files) != 2 {
		t.Fatalf("shmget: %v, %d descriptors", err, len(files))
	}
	_, again, err := r.Get(GetRequest{Kind: KindShm, Key: 30, Size: 4096, Cred: root, Token: 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Get(GetRequest{Kind: KindShm, Key: 30, Size: 16384, Cred: root, Token: 3}); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("shmget larger than the segment: %v, want EINVAL", err)
	}
	a, err := unix.Mmap(int(files[1].Fd()), 0, 8192, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(a)
	b, err := unix.Mmap(int(again[1].Fd()), 0, 8192, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(b)
	copy(a[5000:], "shared")
	if string(b[5000:5006]) != "shared" {
		t.Fatalf("second mapping reads %q", b[5000:5006])
	}
	info, err := r.Stat(KindShm, res.ID, root)
	if err != nil || info.Size != 8192 || info.Attached != 2 || info.Kind != KindShm {
		t.Fatalf("stat: %+v %v", info, err)
	}
	if err := r.Remove(KindShm, res.ID, root); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Get(GetRequest{Kind: KindShm, Key: 30, Cred: root, Token: 1}); !errors.Is(err, unix.ENOENT) {
		t.Fatalf("shmget after removal: %v, want ENOENT", err)
	}
	if string(b[5000:5006]) != "shared" {
		t.Fatal("a mapping lost its pages when the segment was removed")
	}
}
