package fabric

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Conn is one end of a channel: a SOCK_SEQPACKET Unix socket, so that each
// frame is one datagram and its descriptors arrive with it.
//
// A Conn reads in one of two ways. Blocking, a reader parks its thread in
// recvmsg, as the seed's proxy task does; a round trip then costs what raw
// sockets cost, about 1.6 times less than through Go's poller (measured:
// 27 us against 45 us). That suits the few long-lived peer channels and a
// single-threaded command. Polled, readers park as goroutines, which suits
// the many client channels an init serves.
//
// A polled Conn holds no read buffer while it waits: it takes one from a
// pool only when a frame is there to read, so that an init's thousands of
// idle client channels cost a few hundred bytes each, not a frame's 128 KiB.
// Its sends wait for a slow reader within a budget (SendBudget) and a
// deadline (SendTimeout), and past either fail: a client that does not read
// its replies is disconnected, not buffered.
type Conn struct {
	f        *os.File
	rc       syscall.RawConn
	blocking bool

	rmu  sync.Mutex // serializes readers; guards rbuf and oob
	rbuf []byte     // a blocking Conn's own; nil for a polled one
	oob  []byte

	wmu sync.Mutex // serializes a polled Conn's sends
}

// readBuffers are the polled Conns' read buffers, one per frame being read.
var readBuffers = sync.Pool{New: func() any { b := make([]byte, MaxFrame+1); return &b }}

// SendTimeout bounds how long a polled Conn's send waits for its reader to
// make room.
const SendTimeout = 5 * time.Second

// SendBudget bounds the bytes that all polled Conns' sends may hold while
// they wait for slow readers: a send past it fails at once (ErrSlowReader).
var SendBudget = NewBudget(32 << 20)

// ErrSlowReader says a channel's reader did not take its frames in time,
// or while too much was already waiting for readers.
var ErrSlowReader = errors.New("the other end does not read its replies")

// newConn wraps a connected socket. blocking picks the read mode.
func newConn(fd int, blocking bool) (*Conn, error) {
	if err := unix.SetNonblock(fd, !blocking); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("set socket mode: %w", err)
	}
	f := os.NewFile(uintptr(fd), "smpc-channel")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	c := &Conn{f: f, rc: rc, blocking: blocking, oob: make([]byte, unix.CmsgSpace(MaxFiles*4))}
	if blocking {
		c.rbuf = make([]byte, MaxFrame+1)
	}
	return c, nil
}

// Dial connects to a channel address: a path, or "@name" for an abstract
// socket (one per network namespace, which is how a process finds its own
// OSlet's init).
func Dial(addr string, blocking bool) (*Conn, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	for {
		err = unix.Connect(fd, &unix.SockaddrUnix{Name: addr})
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "dial", Path: addr, Err: err}
	}
	return newConn(fd, blocking)
}

// Send writes one frame and its descriptors. Safe for concurrent use.
func (c *Conn) Send(f *Frame) error {
	buf := f.AppendTo(make([]byte, 0, HeaderSize+len(f.Body)))
	var oob []byte
	if len(f.Files) > 0 {
		fds := make([]int, len(f.Files))
		for i, file := range f.Files {
			fds[i] = int(file.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	var err error
	if c.blocking {
		c.rc.Write(func(fd uintptr) bool {
			err = unix.Sendmsg(int(fd), buf, oob, nil, unix.MSG_NOSIGNAL)
			return true
		})
	} else if werr := c.sendPolled(buf, oob, &err); werr != nil {
		return fmt.Errorf("send %s: %w", f.Op, werr)
	}
	if err != nil {
		return fmt.Errorf("send %s: %w", f.Op, err)
	}
	return nil
}

// sendPolled sends on a polled Conn: at once if the socket has room, else
// waiting for the reader within SendBudget and SendTimeout. Sends take
// turns, so that each waiting one owns the Conn's write deadline.
func (c *Conn) sendPolled(buf, oob []byte, err *error) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	waiting := false
	defer func() {
		if waiting {
			c.f.SetWriteDeadline(time.Time{})
			SendBudget.Release(len(buf))
		}
	}()
	werr := c.rc.Write(func(fd uintptr) bool {
		*err = unix.Sendmsg(int(fd), buf, oob, nil, unix.MSG_NOSIGNAL)
		if *err != unix.EAGAIN {
			return true
		}
		if !waiting {
			if !SendBudget.TryAcquire(len(buf)) {
				*err = ErrSlowReader
				return true
			}
			waiting = true
			c.f.SetWriteDeadline(time.Now().Add(SendTimeout))
		}
		return false
	})
	if errors.Is(werr, os.ErrDeadlineExceeded) {
		return ErrSlowReader
	}
	return werr
}

// Recv reads one frame. Descriptors that came with it are the caller's to
// close. It returns io.EOF when the other end has closed.
func (c *Conn) Recv() (*Frame, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	var n, oobn, flags int
	var err error
	buf := c.rbuf
	var pooled *[]byte
	rerr := c.rc.Read(func(fd uintptr) bool {
		if c.rbuf == nil {
			// A buffer only while a frame is read: none while waiting.
			pooled = readBuffers.Get().(*[]byte)
			buf = *pooled
		}
		reset := false
		for {
			n, oobn, flags, _, err = unix.Recvmsg(int(fd), buf, c.oob, unix.MSG_CMSG_CLOEXEC)
			if err == unix.ECONNRESET && !reset {
				// The peer closed with frames of ours unread (a request
				// that rode with a hello it refused). The kernel says so
				// once, before the frames the peer sent last: the next
				// read returns them, then the end.
				reset = true
				continue
			}
			if err != unix.EINTR {
				break
			}
		}
		if err == unix.EAGAIN && pooled != nil {
			readBuffers.Put(pooled)
			pooled = nil
		}
		return err != unix.EAGAIN
	})
	if pooled != nil {
		defer readBuffers.Put(pooled)
	}
	if rerr != nil {
		return nil, rerr
	}
	if err != nil {
		if err == unix.ECONNRESET {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("receive: %w", err)
	}
	files, ferr := parseRights(c.oob[:oobn])
	if n == 0 && len(files) == 0 {
		return nil, io.EOF
	}
	if ferr != nil || flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		CloseAll(files)
		if ferr == nil {
			ferr = fmt.Errorf("%w: datagram or descriptors truncated", ErrFrame)
		}
		return nil, ferr
	}
	body := make([]byte, n)
	copy(body, buf[:n])
	fr, err := ParseFrame(body)
	if err != nil {
		CloseAll(files)
		return nil, err
	}
	fr.Files = files
	return fr, nil
}

func parseRights(oob []byte) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("%w: control message: %v", ErrFrame, err)
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "smpc-passed"))
		}
	}
	return files, nil
}

// CloseAll closes descriptors that nobody took.
func CloseAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// PeerCred returns the kernel's record of the process at the other end.
func (c *Conn) PeerCred() (*unix.Ucred, error) {
	var cred *unix.Ucred
	var err error
	cerr := c.rc.Control(func(fd uintptr) {
		cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if cerr != nil {
		return nil, cerr
	}
	return cred, err
}

// PeerGroups returns the supplementary groups of the process at the other
// end (SO_PEERGROUPS), so that a process started for it gets them too.
func (c *Conn) PeerGroups() ([]uint32, error) {
	var groups []uint32
	var err error
	cerr := c.rc.Control(func(fd uintptr) {
		buf := make([]byte, 4*256)
		for {
			n := uint32(len(buf))
			_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_PEERGROUPS,
				uintptr(unsafePointer(buf)), uintptr(unsafePointer32(&n)), 0)
			if e == unix.ERANGE {
				buf = make([]byte, n)
				continue
			}
			if e != 0 {
				err = e
				return
			}
			for i := 0; i+4 <= int(n); i += 4 {
				groups = append(groups, nativeUint32(buf[i:]))
			}
			return
		}
	})
	if cerr != nil {
		return nil, cerr
	}
	return groups, err
}

// Close shuts the socket down, waking a reader parked in recvmsg, and
// releases it once no call is using it.
func (c *Conn) Close() error {
	c.rc.Control(func(fd uintptr) { unix.Shutdown(int(fd), unix.SHUT_RDWR) })
	return c.f.Close()
}

// Listener accepts channels on a Unix socket.
type Listener struct {
	f    *os.File
	rc   syscall.RawConn
	addr string
}

// Listen binds addr: a path (created with mode 0600, for root and the
// booting user only) or "@name" for an abstract socket.
func Listen(addr string) (*Listener, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	old := unix.Umask(0o177)
	err = unix.Bind(fd, &unix.SockaddrUnix{Name: addr})
	unix.Umask(old)
	if err == nil {
		err = unix.Listen(fd, 512)
	}
	if err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "listen", Path: addr, Err: err}
	}
	f := os.NewFile(uintptr(fd), addr)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &Listener{f: f, rc: rc, addr: addr}, nil
}

// Accept waits for a channel and returns its raw descriptor; the server wraps
// it once the handshake has said which read mode fits.
func (l *Listener) Accept() (int, error) {
	var nfd int
	var err error
	rerr := l.rc.Read(func(fd uintptr) bool {
		for {
			nfd, _, err = unix.Accept4(int(fd), unix.SOCK_CLOEXEC)
			if err != unix.EINTR && err != unix.ECONNABORTED {
				return true
			}
		}
	})
	if rerr != nil {
		return -1, rerr
	}
	if err != nil {
		return -1, fmt.Errorf("accept on %s: %w", l.addr, err)
	}
	return nfd, nil
}

// Close stops the listener, waking a blocked Accept.
func (l *Listener) Close() error {
	l.rc.Control(func(fd uintptr) { unix.Shutdown(int(fd), unix.SHUT_RDWR) })
	return l.f.Close()
}

// waitReadable waits until a frame can be read, or ctx ends. A Caller's
// reader calls it so that its own deadline holds while it reads for
// everyone; with a context that never ends it returns at once, and the
// read that follows waits as long as it must.
func (c *Conn) waitReadable(ctx context.Context) error {
	if ctx.Done() == nil {
		return nil
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		wait := 100 * time.Millisecond
		if d, ok := ctx.Deadline(); ok {
			wait = min(wait, time.Until(d))
		}
		ready := false
		var perr error
		cerr := c.rc.Control(func(fd uintptr) {
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, err := unix.Poll(pfd, int(max(wait.Milliseconds(), 1)))
			switch {
			case err == unix.EINTR:
			case err != nil:
				perr = err
			case n > 0:
				ready = true // a frame, or the channel's end, which Recv reports
			}
		})
		if cerr != nil {
			return cerr
		}
		if perr != nil {
			return fmt.Errorf("wait for a frame: %w", perr)
		}
		if ready {
			return nil
		}
	}
}
