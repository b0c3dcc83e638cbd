package fabric

import (
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Request is one call being served.
type Request struct {
	*Frame
	Conn *Conn

	releaseOnce sync.Once
	release     func()
}

// ReleaseSlot gives back the request's queue slot, and its place in its
// channel's share (ServeConfig.InFlight), before the handler ends. A
// handler that will block for long (wait) calls it first, so that waiting
// never holds a slot that work could use.
func (r *Request) ReleaseSlot() {
	r.releaseOnce.Do(func() {
		if r.release != nil {
			r.release()
		}
	})
}

// Handler serves one request: it returns the reply body and descriptors, or
// an error for an error reply. The request's own descriptors are closed after
// it returns; a handler that keeps one sets its entry to nil.
type Handler func(r *Request) (resp any, files []*os.File, err error)

// ServeConfig shapes how a channel is served.
type ServeConfig struct {
	// Queue, if set, bounds the requests of this channel that run at once
	// across the OSlet: the peer channels share one queue.
	Queue *Queue
	// Inline reports ops cheap enough to run on the reading thread itself,
	// saving a goroutine hand-off (a null call, a signal).
	Inline func(Op) bool
	// InFlight, if set, bounds the requests of this channel that run at
	// once: the channel is not read while that many run, so that a client
	// that sends faster than it is served waits in its own sends, and
	// costs the server no more than InFlight handlers.
	InFlight int
	// Closed, if set, runs as soon as the channel stops reading, before
	// Serve waits for the handlers still running: a handler blocked in a
	// wait must learn at once that its caller is gone.
	Closed func()
}

// Serve reads requests from conn until it closes or sends garbage, and
// answers each with h. A frame that is not a valid request gets the channel
// closed: never a crash, never a hang.
func Serve(conn *Conn, h Handler, cfg ServeConfig) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	if cfg.Closed != nil {
		defer cfg.Closed()
	}
	var inFlight chan struct{}
	if cfg.InFlight > 0 {
		inFlight = make(chan struct{}, cfg.InFlight)
	}
	for {
		f, err := conn.Recv()
		if err != nil {
			return err
		}
		if f.Major != Major || f.Flags&FlagReply != 0 || f.Op == OpHello {
			f.CloseFiles()
			Reply(conn, f, nil, nil, Errorf(CodeInvalid, "unexpected %s frame (version %d.%d, flags %#x)", f.Op, f.Major, f.Minor, f.Flags))
			conn.Close()
			return fmt.Errorf("%w: unexpected %s frame", ErrFrame, f.Op)
		}
		if f.Op >= opEnd {
			f.CloseFiles()
			if err := Reply(conn, f, nil, nil, Errorf(CodeVersion, "%s needs protocol %d.%d; this end speaks %d.%d", f.Op, f.Major, f.Minor, Major, Minor)); err != nil {
				return err
			}
			continue
		}
		req := &Request{Frame: f, Conn: conn}
		if cfg.Inline != nil && cfg.Inline(f.Op) && (cfg.Queue == nil || cfg.Queue.TryAcquire()) {
			if cfg.Queue != nil {
				req.release = cfg.Queue.Release
			}
			serveOne(req, h)
			continue
		}
		// The channel's share first, then the shared queue: a channel
		// that has used its share waits without taking the others' slots.
		if inFlight != nil {
			inFlight <- struct{}{}
		}
		if cfg.Queue != nil {
			cfg.Queue.Acquire()
		}
		req.release = func() {
			if cfg.Queue != nil {
				cfg.Queue.Release()
			}
			if inFlight != nil {
				<-inFlight
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			serveOne(req, h)
		}()
	}
}

func serveOne(req *Request, h Handler) {
	defer req.ReleaseSlot()
	resp, files, err := h(req)
	req.CloseFiles()
	if rerr := Reply(req.Conn, req.Frame, resp, files, err); rerr != nil {
		req.Conn.Close()
	}
	CloseAll(files)
}

// HelloTimeout bounds how long a new channel may take to say hello.
const HelloTimeout = 2 * time.Second

// AcceptConn finishes accepting a channel: it reads the hello, lets decide
// accept or refuse it, wraps the socket in the read mode decide picks, and
// sends the reply. The hello is read through Go's poller with a deadline,
// so that a client that connects and never speaks holds a goroutine for
// HelloTimeout, not an OS thread (threads count against the OSlet's pids
// limit, and an init that cannot make one dies).
func AcceptConn(fd int, decide func(h *Hello, cred *unix.Ucred) (blocking bool, reply *HelloReply, err error)) (*Conn, *Hello, error) {
	tmp, err := newConn(fd, false)
	if err != nil {
		return nil, nil, err
	}
	tmp.f.SetReadDeadline(time.Now().Add(HelloTimeout))
	f, h, err := AcceptHello(tmp)
	if err != nil {
		tmp.Close()
		return nil, nil, err
	}
	tmp.f.SetReadDeadline(time.Time{})
	cred, err := tmp.PeerCred()
	if err != nil {
		tmp.Close()
		return nil, nil, err
	}
	blocking, reply, err := decide(h, cred)
	if err != nil {
		Reply(tmp, f, nil, nil, err)
		tmp.Close()
		return nil, nil, err
	}
	conn := tmp
	if blocking {
		// Hand the socket to a blocking Conn.
		nfd, err := unix.Dup(int(tmp.f.Fd()))
		tmp.f.Close()
		if err != nil {
			return nil, nil, err
		}
		unix.CloseOnExec(nfd)
		if conn, err = newConn(nfd, true); err != nil {
			return nil, nil, err
		}
	}
	if err := Reply(conn, f, reply, nil, nil); err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, h, nil
}
