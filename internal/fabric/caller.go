package fabric

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Caller makes calls on one channel, many at once. Whichever caller is
// waiting takes the reader's role (leader and followers): it reads frames,
// hands others their replies, and steps down once its own reply is in. No
// goroutine sits between the socket and the caller, so a lone call costs one
// send and one receive.
type Caller struct {
	conn   *Conn
	broken func(error) error // maps a channel failure to the error callers see

	reader chan struct{} // holds a token while some caller reads
	// answered is when a frame last came in (UnixNano): a channel with
	// traffic needs no heartbeat to show that its peer is alive.
	answered atomic.Int64

	mu      sync.Mutex
	nextID  uint64                 // guarded by mu; also the number of calls started
	wake    chan<- struct{}        // armed by Quiet, sent on by the next call; guarded by mu
	pending map[uint64]chan *Frame // guarded by mu
	// partial holds the replies whose frames are still coming (FlagMore);
	// only the caller that holds the reader's role touches it.
	partial map[uint64]*Frame
	err     error // set once the channel fails; guarded by mu

	// The answer to the hello that Open sent, until a caller reads it:
	// helloCh is its pending reply (nil once read), helloReply and
	// helloErr what it said. Guarded by helloMu; helloPending says
	// helloCh is set without the lock.
	helloMu      sync.Mutex
	helloPending atomic.Bool
	helloID      uint64
	helloCh      chan *Frame
	helloReply   *HelloReply
	helloErr     error
}

// NewCaller returns a caller on conn. broken turns a channel failure into the
// error that pending and later calls get (for a peer: "oslet K is down").
func NewCaller(conn *Conn, broken func(error) error) *Caller {
	if broken == nil {
		broken = func(err error) error { return err }
	}
	return &Caller{conn: conn, broken: broken, reader: make(chan struct{}, 1), pending: map[uint64]chan *Frame{}, partial: map[uint64]*Frame{}}
}

// Err returns the failure that broke the channel, or nil.
func (c *Caller) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Answered returns when the peer last sent a frame on the channel (the zero
// time before it ever did).
func (c *Caller) Answered() time.Time {
	if n := c.answered.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// Calls returns how many calls were started on the channel and how many of
// them still wait for their replies.
func (c *Caller) Calls() (started uint64, pending int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nextID, len(c.pending)
}

// Quiet reports whether the channel is quiet: unbroken, with no call
// pending and none started since the first seen. If it is, the next call to
// start sends on wake, without blocking. It lets a keeper that watches the
// peer's liveness sleep while nobody waits on the peer, and costs the calls
// nothing: the send rides on the lock that a call takes anyway.
func (c *Caller) Quiet(seen uint64, wake chan<- struct{}) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil || c.nextID != seen || len(c.pending) != 0 {
		return false
	}
	c.wake = wake
	return true
}

// Close closes the channel; pending calls fail.
func (c *Caller) Close() error { return c.conn.Close() }

// Call sends req with its descriptors and decodes the reply into resp. The
// reply's descriptors are returned. ctx is honoured throughout: while the
// call waits for another caller to read, and while it reads for everyone
// (a reply that comes after it gave up is dropped), so that a peer that
// hangs without dying holds no caller past its deadline.
func (c *Caller) Call(ctx context.Context, op Op, req any, files []*os.File, resp any) ([]*os.File, error) {
	id, ch, err := c.send(ctx, op, req, files)
	if err != nil {
		return nil, err
	}
	// The hello's answer comes before this call's: a refusal answers the
	// call too.
	if c.helloPending.Load() {
		if _, err := c.Hello(ctx); err != nil {
			c.forget(id)
			return nil, err
		}
	}
	reply, err := c.await(ctx, id, ch)
	if err != nil {
		return nil, err
	}
	if err := reply.Decode(resp); err != nil {
		reply.CloseFiles()
		return nil, err
	}
	return reply.Files, nil
}

// send starts a call: it registers the call's reply and sends its request.
func (c *Caller) send(ctx context.Context, op Op, req any, files []*os.File) (uint64, chan *Frame, error) {
	ch := make(chan *Frame, 1)
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return 0, nil, c.err
	}
	c.nextID++
	id := c.nextID
	c.pending[id] = ch
	if c.wake != nil {
		select {
		case c.wake <- struct{}{}:
		default:
		}
		c.wake = nil
	}
	c.mu.Unlock()

	f, err := NewFrame(op, id, 0, req, files)
	if err == nil {
		if err = c.conn.Send(f); err != nil {
			// A peer that refused the hello closes the channel: its
			// refusal, still to be read, says why the send failed.
			if c.helloPending.Load() && op != OpHello {
				if _, herr := c.Hello(ctx); herr != nil {
					err = herr
				}
			}
			if cerr := c.fail(err); !c.helloFailed() {
				err = cerr
			}
		}
	}
	if err != nil {
		c.forget(id)
		return 0, nil, err
	}
	return id, ch, nil
}

// helloFailed says that the answer to Open's hello was a refusal or never
// came.
func (c *Caller) helloFailed() bool {
	c.helloMu.Lock()
	defer c.helloMu.Unlock()
	return c.helloErr != nil
}

func (c *Caller) forget(id uint64) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

func (c *Caller) await(ctx context.Context, id uint64, ch chan *Frame) (*Frame, error) {
	for {
		select {
		case f := <-ch:
			if f == nil {
				return nil, c.Err()
			}
			return f, nil
		case <-ctx.Done():
			c.forget(id)
			return nil, ctx.Err()
		case c.reader <- struct{}{}:
		}
		// Leader: read until our own reply comes.
		for {
			select {
			case f := <-ch: // delivered before we took the role
				<-c.reader
				if f == nil {
					return nil, c.Err()
				}
				return f, nil
			default:
			}
			if err := c.conn.waitReadable(ctx); err != nil {
				c.forget(id)
				<-c.reader
				return nil, err
			}
			f, err := c.conn.Recv()
			if err == nil {
				c.answered.Store(time.Now().UnixNano())
				f, err = c.assemble(f)
			}
			if err != nil {
				c.fail(err)
				<-c.reader
				return nil, c.Err()
			}
			if f == nil {
				continue // a frame of a reply that goes on
			}
			if f.ID == id {
				c.forget(id)
				<-c.reader
				return f, nil
			}
			c.mu.Lock()
			other, ok := c.pending[f.ID]
			delete(c.pending, f.ID)
			c.mu.Unlock()
			if ok {
				other <- f
			} else {
				f.CloseFiles() // a reply for a call that gave up
			}
		}
	}
}

// assemble gathers the frames of a reply that spans several (FlagMore): it
// returns nil until the last one, then the whole reply. Only the reader
// calls it.
func (c *Caller) assemble(f *Frame) (*Frame, error) {
	part, spanning := c.partial[f.ID]
	if f.Flags&FlagMore == 0 && !spanning {
		return f, nil
	}
	if !spanning {
		part = &Frame{Header: f.Header, Files: f.Files}
		part.Flags &^= FlagMore
		c.partial[f.ID] = part
	} else {
		CloseAll(f.Files) // descriptors travel with the first frame only
	}
	if len(part.Body)+len(f.Body) > MaxReply {
		delete(c.partial, f.ID)
		part.CloseFiles()
		return nil, fmt.Errorf("%w: a reply of more than %d bytes", ErrFrame, MaxReply)
	}
	part.Body = append(part.Body, f.Body...)
	if f.Flags&FlagMore != 0 {
		return nil, nil
	}
	delete(c.partial, f.ID)
	part.Len = uint32(len(part.Body))
	return part, nil
}

// fail marks the channel broken and wakes every pending call.
func (c *Caller) fail(cause error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = c.broken(cause)
		c.conn.Close()
		for id, ch := range c.pending {
			ch <- nil
			delete(c.pending, id)
		}
	}
	return c.err
}

// HandshakeTimeout bounds the answer to a hello: an OSlet whose init is
// alive but hung (stopped, say) accepts connections, since the kernel does,
// and never answers.
const HandshakeTimeout = 5 * time.Second

// handshakeTimeout is HandshakeTimeout, shortened by tests.
var handshakeTimeout = HandshakeTimeout

// ErrNotAnswering says an OSlet's init took a channel and did not answer.
var ErrNotAnswering = errors.New("not answering")

// Handshake sends Hello on a fresh channel and checks the answer.
func Handshake(conn *Conn, hello Hello) (*HelloReply, error) {
	c, err := Open(conn, hello, nil)
	if err != nil {
		return nil, err
	}
	return c.Hello(context.Background())
}

// Open sends hello on conn and returns the channel's Caller at once, without
// waiting for the answer: a channel's first call follows its hello in the
// socket, and its answer follows the hello's, so that the call costs one
// round trip, not two. The first call (or Hello) reads the hello's answer; a
// refusal, or no answer within HandshakeTimeout (ErrNotAnswering), is that
// call's error. A peer reads a request only after it has answered the hello
// (and one whose caller gave up waiting finds it gone and serves nothing).
func Open(conn *Conn, hello Hello, broken func(error) error) (*Caller, error) {
	c := NewCaller(conn, broken)
	id, ch, err := c.send(context.Background(), OpHello, hello, nil)
	if err != nil {
		conn.Close()
		return nil, err
	}
	c.helloID, c.helloCh = id, ch
	c.helloPending.Store(true)
	return c, nil
}

// Hello returns the answer to the hello that Open sent, waiting for it at
// most HandshakeTimeout; the same answer every time. A refusal is the error,
// and breaks the channel. A Caller made by NewCaller has no hello: (nil, nil).
func (c *Caller) Hello(ctx context.Context) (*HelloReply, error) {
	c.helloMu.Lock()
	defer c.helloMu.Unlock()
	if c.helloCh == nil {
		return c.helloReply, c.helloErr
	}
	wait, cancel := context.WithTimeout(ctx, handshakeTimeout)
	f, err := c.await(wait, c.helloID, c.helloCh)
	cancel()
	c.helloCh = nil
	c.helloPending.Store(false)
	switch {
	case err == nil:
		var reply HelloReply
		if err = f.Decode(&reply); err == nil {
			c.helloReply = &reply
		}
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
		err = fmt.Errorf("%w: no answer to hello within %v", ErrNotAnswering, handshakeTimeout)
	}
	if err != nil {
		c.helloErr = err
		c.fail(err)
	}
	return c.helloReply, c.helloErr
}

// AcceptHello reads the first frame of a channel and checks its version. A
// peer of another major version gets a refusal that names both versions.
func AcceptHello(conn *Conn) (*Frame, *Hello, error) {
	f, err := conn.Recv()
	if err != nil {
		return nil, nil, err
	}
	f.CloseFiles()
	if f.Op != OpHello {
		return nil, nil, fmt.Errorf("%w: first frame is %s, want hello", ErrFrame, f.Op)
	}
	if f.Major != Major {
		e := Errorf(CodeVersion, "protocol version %d.%d is not supported: this oslet speaks %d.%d", f.Major, f.Minor, Major, Minor)
		Reply(conn, f, nil, nil, e)
		return nil, nil, e
	}
	var h Hello
	if err := json.Unmarshal(f.Body, &h); err != nil {
		e := Errorf(CodeInvalid, "bad hello: %v", err)
		Reply(conn, f, nil, nil, e)
		return nil, nil, e
	}
	return f, &h, nil
}

// Reply answers request req with resp, or with err when it is not nil.
func Reply(conn *Conn, req *Frame, resp any, files []*os.File, err error) error {
	flags := FlagReply
	var body any = resp
	if err != nil {
		flags |= FlagError
		body, files = AsError(err), nil
	}
	if body == nil {
		body = Empty{}
	}
	b, ferr := json.Marshal(body)
	var f *Frame
	if ferr == nil {
		f, ferr = frameOf(req.Op, req.ID, flags, b, files)
	}
	if errors.Is(ferr, errTooLarge) && flags&FlagError == 0 {
		return sendSpanning(conn, req, b, files)
	}
	if ferr != nil {
		f, _ = NewFrame(req.Op, req.ID, FlagReply|FlagError, AsError(ferr), nil)
	}
	return conn.Send(f)
}

// sendSpanning sends a reply too large for one frame as several (2.1), to
// a caller that reads them; a 2.0 caller gets an error reply instead.
func sendSpanning(conn *Conn, req *Frame, b []byte, files []*os.File) error {
	var err error
	switch {
	case req.Minor < 1:
		err = Errorf(CodeVersion, "the %s reply is %d bytes, more than one frame, which a protocol %d.%d caller cannot read (2.1 can)", req.Op, len(b), req.Major, req.Minor)
	case len(b) > MaxReply:
		err = Errorf(CodeInvalid, "the %s reply is %d bytes, more than the %d a reply may have", req.Op, len(b), MaxReply)
	}
	if err != nil {
		f, _ := NewFrame(req.Op, req.ID, FlagReply|FlagError, AsError(err), nil)
		return conn.Send(f)
	}
	const chunk = MaxFrame - HeaderSize
	for off := 0; off < len(b); off += chunk {
		end := min(off+chunk, len(b))
		f := &Frame{Header: Header{Major: Major, Minor: Minor, Op: req.Op, Flags: FlagReply, ID: req.ID}, Body: b[off:end]}
		if end < len(b) {
			f.Flags |= FlagMore
		}
		if off == 0 {
			f.Files = files
		}
		if err := conn.Send(f); err != nil {
			return err
		}
	}
	return nil
}

// ErrChannelClosed is what a call gets when its channel closed under it.
var ErrChannelClosed = errors.New("channel closed")
