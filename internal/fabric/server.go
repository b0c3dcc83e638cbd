package fabric

import (
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Request is one call being served.
type Request struct {
	*Frame
	Conn *Conn

	releaseOnce sync.Once
	release     func()
}

// ReleaseSlot gives back the request's queue slot before the handler ends.
// A handler that will block for long (wait) calls it first, so that waiting
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
		if cfg.Queue != nil {
			cfg.Queue.Acquire()
			req.release = cfg.Queue.Release
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

// AcceptConn finishes accepting a channel: it reads the hello, lets decide
// accept or refuse it, wraps the socket in the read mode decide picks, and
// sends the reply.
func AcceptConn(fd int, decide func(h *Hello, cred *unix.Ucred) (blocking bool, reply *HelloReply, err error)) (*Conn, *Hello, error) {
	// The hello is read with a timeout, so a client that never speaks
	// cannot hold an accept slot.
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5})
	tmp, err := newConn(fd, true)
	if err != nil {
		return nil, nil, err
	}
	f, h, err := AcceptHello(tmp)
	if err != nil {
		tmp.Close()
		return nil, nil, err
	}
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
	// Hand the socket to a Conn of the chosen mode.
	nfd, err := unix.Dup(int(tmp.f.Fd()))
	tmp.f.Close()
	if err != nil {
		return nil, nil, err
	}
	unix.CloseOnExec(nfd)
	unix.SetsockoptTimeval(nfd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{})
	conn, err := newConn(nfd, blocking)
	if err != nil {
		return nil, nil, err
	}
	if err := Reply(conn, f, reply, nil, nil); err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, h, nil
}
