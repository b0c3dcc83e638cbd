package fabric

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
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

func TestQuietWakesOnNextCall(t *testing.T) {
	addr := serve(t, ServeConfig{Inline: func(op Op) bool { return op == OpPing }})
	c := dial(t, addr, RolePeer)
	wake := make(chan struct{}, 1)
	started, pending := c.Calls()
	if !c.Quiet(started, wake) || pending != 0 {
		t.Fatalf("a fresh channel: not quiet (%d started, %d pending)", started, pending)
	}
	select {
	case <-wake:
		t.Fatal("woken with no call")
	default:
	}
	if _, err := c.Call(context.Background(), OpPing, Empty{}, nil, &Empty{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-wake:
	default:
		t.Fatal("a call on a quiet channel sent no wake-up")
	}
	if c.Quiet(started, wake) {
		t.Fatal("quiet though a call started since the keeper looked")
	}
	started, _ = c.Calls()
	if !c.Quiet(started, wake) {
		t.Fatal("not quiet after the keeper saw the call")
	}
	for range 2 { // one wake-up per arming, never a blocked call
		if _, err := c.Call(context.Background(), OpPing, Empty{}, nil, &Empty{}); err != nil {
			t.Fatal(err)
		}
	}
	if len(wake) != 1 {
		t.Fatalf("%d wake-ups queued, want 1", len(wake))
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

	conn2, err := Dial(addr, true)
	if err != nil {
		t.Fatal(err)
	}
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
		fd, err := l.Accept()
		if err != nil {
			return // the test fails on its own: its call is never answered
		}
		conn, _, err := AcceptConn(fd, func(*Hello, *unix.Ucred) (bool, *HelloReply, error) { return true, &HelloReply{}, nil })
		if err != nil {
			return
		}
		conn.Recv() // take one request, then die without answering
		conn.Close()
	}()
	conn, err := Dial(addr, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Handshake(conn, Hello{Role: RolePeer}); err != nil {
		t.Fatal(err)
	}
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
		if err, _ := serveGarbage(t, garbage); !errors.Is(err, ErrFrame) {
			t.Errorf("garbage %q: Serve returned %v, want a malformed-frame error", garbage, err)
		}
	}
}

// serveGarbage serves one channel whose client sends b and closes its
// end. It returns what Serve returned and whether the client got a reply.
func serveGarbage(t *testing.T, b []byte) (served error, replied bool) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socketpair: %v", err)
	}
	server, err := newConn(fds[0], true)
	if err != nil {
		t.Fatal(err)
	}
	client, err := newConn(fds[1], true)
	if err != nil {
		t.Fatal(err)
	}
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
	case served = <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("the server hung on %q", b)
	}
	reply, err := client.Recv()
	if err == nil {
		reply.CloseFiles()
	}
	return served, err == nil
}

func FuzzParseFrame(f *testing.F) {
	good, _ := NewFrame(OpSpawn, 7, 0, SpawnRequest{Argv: []string{"true"}}, nil)
	f.Add(good.AppendTo(nil))
	bad, _ := NewFrame(OpWait, 8, FlagReply|FlagError, Errorf(CodeDown, "oslet 2 is down"), nil)
	f.Add(bad.AppendTo(nil))
	f.Add([]byte("SMPC"))
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := ParseFrame(b)
		if err != nil {
			if !errors.Is(err, ErrFrame) {
				t.Fatalf("ParseFrame: %v is not an ErrFrame", err)
			}
			return
		}
		// What parses encodes back to the same bytes, but for the header's
		// reserved ones, which a reader ignores (a newer minor version may
		// use them).
		want := slices.Clone(b)
		want[10], want[11] = 0, 0
		if again := fr.AppendTo(nil); !bytes.Equal(again, want) {
			t.Fatalf("frame %q encodes back as %q", b, again)
		}
		// An error reply decodes to an error whatever it is asked for;
		// a body that decodes into one message decodes the same again.
		for _, v := range []any{&SpawnRequest{}, &SignalRequest{}, &WaitRequest{}, &Hello{}, &StatusReply{}, &ProcessesReply{}} {
			err := fr.Decode(v)
			if fr.Flags&FlagError != 0 && err == nil {
				t.Fatalf("an error reply decoded into %T without an error", v)
			}
			if err == nil {
				round, merr := json.Marshal(v)
				if merr != nil {
					t.Fatalf("%T decoded from %q does not encode: %v", v, fr.Body, merr)
				}
				w := reflect.New(reflect.TypeOf(v).Elem()).Interface()
				if err := json.Unmarshal(round, w); err != nil || !reflect.DeepEqual(v, w) {
					t.Fatalf("%T does not survive a round trip: %v", v, err)
				}
			}
		}
	})
}

func FuzzServe(f *testing.F) {
	good, _ := NewFrame(OpPing, 1, 0, Empty{}, nil)
	f.Add(good.AppendTo(nil))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		served, replied := serveGarbage(t, b)
		fr, err := ParseFrame(b)
		switch {
		case err == nil && fr.Major == Major && fr.Flags&FlagReply == 0 && fr.Op != OpHello:
			// A request, whatever it asks: it gets an answer, and the
			// channel then ends with the client's.
			if !replied {
				t.Fatalf("no reply to the request %q", b)
			}
		case len(b) == 0:
			// An empty datagram reads as the end of the channel.
		default:
			if served == nil || errors.Is(served, io.EOF) {
				t.Fatalf("Serve took the garbage %q without an error (%v)", b, served)
			}
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

// rawServer accepts one channel on a fresh socket and hands its Conn to
// serve, without any of the package's server.
func rawServer(t *testing.T, serve func(conn *Conn)) string {
	t.Helper()
	addr := filepath.Join(t.TempDir(), "raw.sock")
	l, err := Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		fd, err := l.Accept()
		if err != nil {
			return
		}
		conn, err := newConn(fd, true)
		if err != nil {
			return
		}
		defer conn.Close()
		serve(conn)
	}()
	return addr
}

// openHost dials addr and opens a channel as the host, without waiting for
// the hello's answer.
func openHost(t *testing.T, addr string, broken func(error) error) *Caller {
	t.Helper()
	conn, err := Dial(addr, true)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Open(conn, Hello{Role: RoleHost}, broken)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Open does not wait for the hello's answer: the first call's request is in
// the socket before the peer answers the hello, and both answers come back.
func TestOpenRidesFirstCallWithHello(t *testing.T) {
	addr := rawServer(t, func(conn *Conn) {
		hello, err := conn.Recv()
		if err != nil || hello.Op != OpHello {
			t.Errorf("first frame: %v %v", hello, err)
			return
		}
		ping, err := conn.Recv() // sent before any answer
		if err != nil || ping.Op != OpPing {
			t.Errorf("second frame before the hello's answer: %v %v", ping, err)
			return
		}
		Reply(conn, hello, HelloReply{OSlet: 3}, nil, nil)
		Reply(conn, ping, Empty{}, nil, nil)
	})
	c := openHost(t, addr, nil)
	defer c.Close()
	if _, err := c.Call(context.Background(), OpPing, Empty{}, nil, &Empty{}); err != nil {
		t.Fatalf("first call: %v", err)
	}
	if reply, err := c.Hello(context.Background()); err != nil || reply.OSlet != 3 {
		t.Fatalf("Hello = %+v, %v; want OSlet 3", reply, err)
	}
}

// A refused hello is the error of the call that rode with it, even when the
// peer closed the channel before that call's request went out, and of
// every call after it.
func TestOpenRefusal(t *testing.T) {
	for _, late := range []bool{false, true} {
		closed := make(chan struct{})
		addr := rawServer(t, func(conn *Conn) {
			defer close(closed)
			hello, err := conn.Recv()
			if err != nil {
				return
			}
			Reply(conn, hello, nil, nil, Errorf(CodePermission, "go away"))
			conn.Close()
		})
		c := openHost(t, addr, func(error) error { return DownError(9) })
		if late {
			<-closed // the request's send then fails (EPIPE)
		}
		for n := 0; n < 2; n++ {
			_, err := c.Call(context.Background(), OpPing, Empty{}, nil, &Empty{})
			if n == 0 && (!errors.Is(err, ErrPermission) || !strings.Contains(err.Error(), "go away")) {
				t.Errorf("late=%v: first call = %v; want the refusal", late, err)
			}
			if err == nil {
				t.Errorf("late=%v: call %d on a refused channel succeeded", late, n+1)
			}
		}
		if _, err := c.Hello(context.Background()); !errors.Is(err, ErrPermission) {
			t.Errorf("late=%v: Hello = %v; want the refusal", late, err)
		}
		c.Close()
	}
}

// A peer that takes the channel and never answers the hello (a stopped
// init) fails the first call within HandshakeTimeout, as not answering.
func TestOpenNotAnswering(t *testing.T) {
	defer func(d time.Duration) { handshakeTimeout = d }(handshakeTimeout)
	handshakeTimeout = 200 * time.Millisecond
	stop := make(chan struct{})
	defer close(stop)
	addr := rawServer(t, func(conn *Conn) { <-stop })
	c := openHost(t, addr, nil)
	defer c.Close()
	start := time.Now()
	_, err := c.Call(context.Background(), OpWait, WaitRequest{PID: 5}, nil, &WaitReply{})
	if !errors.Is(err, ErrNotAnswering) {
		t.Fatalf("call to a peer that never answers: %v", err)
	}
	if took := time.Since(start); took > 5*handshakeTimeout {
		t.Errorf("took %v to give up, the hello's timeout is %v", took, handshakeTimeout)
	}
}
