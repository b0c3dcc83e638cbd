package fabric

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// serve starts a server on a fresh socket whose handler answers ping and
// echoes descriptors back, and returns its address.
func serve(t testing.TB, cfg ServeConfig) string {
	t.Helper()
	addr := filepath.Join(t.TempDir(), "s.sock")
	l, err := Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			fd, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				conn, _, err := AcceptConn(fd, func(h *Hello, _ *unix.Ucred) (bool, *HelloReply, error) {
					if h.Role == "nobody" {
						return false, nil, Errorf(CodePermission, "go away")
					}
					return h.Role == RolePeer, &HelloReply{OSlet: 7}, nil
				})
				if err != nil {
					return
				}
				Serve(conn, func(r *Request) (any, []*os.File, error) {
					switch r.Op {
					case OpPing:
						return Empty{}, nil, nil
					case OpSpawn: // echo the descriptors
						files := r.Files
						r.Files = nil
						return Empty{}, files, nil
					case OpProcesses: // a list of many frames, and a descriptor
						var reply ProcessesReply
						for n := range bigList {
							reply.Processes = append(reply.Processes, Process{PID: int32(n), Command: strings.Repeat("x", 100)})
						}
						f, err := os.Open("/dev/null")
						return reply, []*os.File{f}, err
					}
					return nil, nil, Errorf(CodeInvalid, "no %s here", r.Op)
				}, cfg)
				conn.Close()
			}()
		}
	}()
	return addr
}

func dial(t testing.TB, addr string, role Role) *Caller {
	t.Helper()
	conn, err := Dial(addr, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Handshake(conn, Hello{Role: role}); err != nil {
		t.Fatal(err)
	}
	c := NewCaller(conn, nil)
	t.Cleanup(func() { c.Close() })
	return c
}

func TestCallAndPassFiles(t *testing.T) {
	addr := serve(t, ServeConfig{Inline: func(op Op) bool { return op == OpPing }})
	c := dial(t, addr, RolePeer)
	if _, err := c.Call(context.Background(), OpPing, Empty{}, nil, &Empty{}); err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	files, err := c.Call(context.Background(), OpSpawn, Empty{}, []*os.File{w}, &Empty{})
	if err != nil || len(files) != 1 {
		t.Fatalf("echo: %v, %d files", err, len(files))
	}
	w.Close()
	files[0].WriteString("through the fabric")
	files[0].Close()
	got, _ := io.ReadAll(r)
	if string(got) != "through the fabric" {
		t.Fatalf("read %q", got)
	}
	_, err = c.Call(context.Background(), OpWait, Empty{}, nil, &Empty{})
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("unknown op: %v", err)
	}
}

func TestConcurrentCalls(t *testing.T) {
	addr := serve(t, ServeConfig{Queue: NewQueue(2)})
	c := dial(t, addr, RoleClient)
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				if _, err := c.Call(context.Background(), OpPing, Empty{}, nil, &Empty{}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestHandshakeRefusals(t *testing.T) {
	addr := serve(t, ServeConfig{})
	// A 1.x OSlet (a PID namespace each, smpc's own SysV objects) and a
	// newer major version are both refused, with both versions named.
	for _, v := range [][2]uint8{{1, 3}, {Major + 1, 0}} {
		conn, err := Dial(addr, true)
		if err != nil {
			t.Fatal(err)
		}
		f, _ := NewFrame(OpHello, 1, 0, Hello{Role: RolePeer}, nil)
		f.Major, f.Minor = v[0], v[1]
		if err := conn.Send(f); err != nil {
			t.Fatal(err)
		}
		reply, err := conn.Recv()
		if err != nil {
			t.Fatal(err)
		}
		err = reply.Decode(&HelloReply{})
		theirs, ours := fmt.Sprintf("%d.%d", v[0], v[1]), fmt.Sprintf("%d.%d", Major, Minor)
		if !errors.Is(err, ErrVersion) || !strings.Contains(err.Error(), theirs) || !strings.Contains(err.Error(), ours) {
			t.Fatalf("refusal = %v; want one naming %s and %s", err, theirs, ours)
		}
		if _, err := conn.Recv(); err != io.EOF {
			t.Fatalf("channel not closed after refusal of %s: %v", theirs, err)
		}
		conn.Close()
	}

	conn2, _ := Dial(addr, true)
	defer conn2.Close()
	if _, err := Handshake(conn2, Hello{Role: "nobody"}); !errors.Is(err, ErrPermission) {
		t.Fatalf("refused role: %v", err)
	}
}

func TestPeerDeathFailsPendingCalls(t *testing.T) {
	addr := filepath.Join(t.TempDir(), "s.sock")
	l, err := Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		fd, _ := l.Accept()
		conn, _, err := AcceptConn(fd, func(*Hello, *unix.Ucred) (bool, *HelloReply, error) { return true, &HelloReply{}, nil })
		if err != nil {
			return
		}
		conn.Recv() // take one request, then die without answering
		conn.Close()
	}()
	conn, _ := Dial(addr, true)
	Handshake(conn, Hello{Role: RolePeer})
	c := NewCaller(conn, func(error) error { return DownError(3) })
	done := make(chan error)
	go func() {
		_, err := c.Call(context.Background(), OpWait, Empty{}, nil, &Empty{})
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrDown) || err.Error() != "oslet 3 is down" {
			t.Fatalf("pending call got %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("pending call hangs after its peer died")
	}
	if _, err := c.Call(context.Background(), OpPing, Empty{}, nil, &Empty{}); !errors.Is(err, ErrDown) {
		t.Fatalf("later call got %v", err)
	}
}

// TestNewerOpRefused checks that a request of a newer minor version that
// this end does not know gets a version error and the channel lives on.
func TestNewerOpRefused(t *testing.T) {
	addr := serve(t, ServeConfig{})
	conn, err := Dial(addr, true)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := Handshake(conn, Hello{Role: RolePeer}); err != nil {
		t.Fatal(err)
	}
	f, _ := NewFrame(OpPing, 7, 0, Empty{}, nil)
	f.Op, f.Minor = opEnd+3, Minor+1
	if err := conn.Send(f); err != nil {
		t.Fatal(err)
	}
	reply, err := conn.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if err := reply.Decode(&Empty{}); !errors.Is(err, ErrVersion) || reply.ID != 7 {
		t.Fatalf("newer op: reply %d %v, want a version error for request 7", reply.ID, err)
	}
	c := NewCaller(conn, nil)
	if _, err := c.Call(context.Background(), OpPing, Empty{}, nil, &Empty{}); err != nil {
		t.Fatalf("ping after a refused newer op: %v", err)
	}
}

// TestErrnoCodes checks that an errno crosses as its name and still
// matches the errno.
func TestErrnoCodes(t *testing.T) {
	err := AsError(fmt.Errorf("oslet 2: msg key 0x1: %w", syscall.EEXIST))
	var back Error
	json.Unmarshal(must(json.Marshal(err)), &back)
	if !errors.Is(&back, syscall.EEXIST) || errors.Is(&back, syscall.ENOENT) || !errors.Is(&back, ErrExists) || back.Error() != "oslet 2: msg key 0x1: file exists" {
		t.Fatalf("errno across: %+v", back)
	}
	if e := AsError(errors.New("plain")); e.Code != CodeInternal {
		t.Fatalf("plain error: %+v", e)
	}
	for _, tt := range []struct {
		err  error
		want syscall.Errno
	}{
		{&back, syscall.EEXIST},
		{fmt.Errorf("open: %w", syscall.EACCES), syscall.EACCES},
		{Errorf(CodeAccess, "no"), syscall.EACCES},
		{Errorf(CodeDown, "oslet 2 is down"), 0},
		{errors.New("plain"), 0},
	} {
		if got, ok := Errno(tt.err); got != tt.want || ok != (tt.want != 0) {
			t.Errorf("Errno(%v) = %v, %v; want %v", tt.err, got, ok, tt.want)
		}
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

func TestGarbageClosesChannel(t *testing.T) {
	for _, garbage := range [][]byte{
		[]byte("hello"),
		make([]byte, HeaderSize),
		append((&Frame{Header: Header{Major: Major, Op: OpPing}}).AppendTo(nil), 'x'),
		(&Frame{Header: Header{Major: Major, Op: 999}}).AppendTo(nil),
		(&Frame{Header: Header{Major: 9, Op: OpPing}}).AppendTo(nil),
	} {
		if err := serveGarbage(garbage); !errors.Is(err, ErrFrame) {
			t.Errorf("garbage %q: Serve returned %v, want a malformed-frame error", garbage, err)
		}
	}
}

// serveGarbage sends one datagram to a serving channel, then closes its
// sending side, and reports what Serve returned.
func serveGarbage(b []byte) error {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	server, _ := newConn(fds[0], true)
	client, _ := newConn(fds[1], true)
	defer client.Close()
	done := make(chan error, 1)
	go func() {
		done <- Serve(server, func(*Request) (any, []*os.File, error) { return Empty{}, nil, nil }, ServeConfig{})
		server.Close()
	}()
	client.rc.Write(func(fd uintptr) bool {
		unix.Sendmsg(int(fd), b, nil, nil, unix.MSG_NOSIGNAL)
		unix.Shutdown(int(fd), unix.SHUT_WR)
		return true
	})
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		return errors.New("hang")
	}
}

func TestQueueIsFIFO(t *testing.T) {
	q := NewQueue(1)
	q.Acquire()
	var order []int
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := 0; i < 5; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q.Acquire()
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			q.Release()
		}()
		for { // wait until it queues, so arrival order is i
			if w, _ := q.Depth(); w == i+1 {
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	if w, a := q.Depth(); w != 5 || a != 1 {
		t.Fatalf("depth = %d waiting, %d active", w, a)
	}
	q.Release()
	wg.Wait()
	for i, v := range order {
		if v != i {
			t.Fatalf("served in order %v", order)
		}
	}
}

func FuzzParseFrame(f *testing.F) {
	good, _ := NewFrame(OpSpawn, 7, 0, SpawnRequest{Argv: []string{"true"}}, nil)
	f.Add(good.AppendTo(nil))
	f.Add([]byte("SMPC"))
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := ParseFrame(b)
		if err != nil {
			return
		}
		for _, v := range []any{&SpawnRequest{}, &SignalRequest{}, &WaitRequest{}, &Hello{}, &StatusReply{}, &ProcessesReply{}} {
			fr.Decode(v)
		}
	})
}

func FuzzServe(f *testing.F) {
	good, _ := NewFrame(OpPing, 1, 0, Empty{}, nil)
	f.Add(good.AppendTo(nil))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := serveGarbage(b); err != nil && err.Error() == "hang" {
			t.Fatal("server hung on garbage")
		}
	})
}

func BenchmarkNullCall(b *testing.B) {
	addr := serve(b, ServeConfig{Inline: func(op Op) bool { return op == OpPing }})
	c := dial(b, addr, RolePeer)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Call(context.Background(), OpPing, Empty{}, nil, &Empty{}); err != nil {
			b.Fatal(err)
		}
	}
}

// bigList is how many processes the test server's list holds: about 1.5 MB
// of JSON, a dozen frames.
const bigList = 10000

// A reply larger than a frame spans several, descriptors with the first,
// and comes back whole (2.1); other calls on the channel go on meanwhile.
func TestReplySpansFrames(t *testing.T) {
	c := dial(t, serve(t, ServeConfig{}), RoleClient)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var reply ProcessesReply
			files, err := c.Call(context.Background(), OpProcesses, ProcessesRequest{}, nil, &reply)
			if err != nil {
				t.Error(err)
				return
			}
			CloseAll(files)
			if len(reply.Processes) != bigList || reply.Processes[bigList-1].PID != bigList-1 || len(files) != 1 {
				t.Errorf("got %d processes and %d descriptors, want %d and 1", len(reply.Processes), len(files), bigList)
			}
		}()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Call(context.Background(), OpPing, Empty{}, nil, &Empty{}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
}

// A 2.0 caller, which cannot read a reply of many frames, gets an error
// that says so, and its channel lives on.
func TestReplyTooLargeForOldCaller(t *testing.T) {
	conn, err := Dial(serve(t, ServeConfig{}), true)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := Handshake(conn, Hello{Role: RoleClient}); err != nil {
		t.Fatal(err)
	}
	for _, op := range []Op{OpProcesses, OpPing} {
		f, err := NewFrame(op, 9, 0, Empty{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		f.Minor = 0
		if err := conn.Send(f); err != nil {
			t.Fatal(err)
		}
		reply, err := conn.Recv()
		if err != nil {
			t.Fatalf("%s: %v", op, err)
		}
		err = reply.Decode(&ProcessesReply{})
		switch {
		case op == OpProcesses && (err == nil || !strings.Contains(err.Error(), "which a protocol 2.0 caller cannot read")):
			t.Errorf("a 2.0 caller's long list: %v", err)
		case op == OpPing && err != nil:
			t.Errorf("ping after the refused list: %v", err)
		}
	}
}
