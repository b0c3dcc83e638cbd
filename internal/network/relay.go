package network

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// A relay makes a TCP server that an OSlet's process bound to its own
// loopback (127.0.0.1:P, as many databases and caches listen unless told
// otherwise) a server of the cluster's localhost, as it would be on one
// machine: the host's and the other OSlets' processes reach it through
// their own 127.0.0.1:P. No route leads to another stack's loopback, and
// the kernel drops packets from outside to 127.0.0.0/8, so the relay
// listens on the OSlet's own address, port P, inside the OSlet's network
// namespace, and joins each connection to one it makes to the server's
// loopback address there: the forwarder's maps then lead the cluster's
// localhost:P to the relay as to any other OSlet listener.
//
// What a server bound to loopback means stays true: the port is not
// forwarded from outside the machine, and the relay resets at once any
// connection whose source is not one of the cluster's own addresses (the
// host's face on the bridge or an OSlet's), such as a machine on the bridge.
//
// The relay copies with splice(2) (Go's TCPConn.ReadFrom), in the kernel:
// no user-space proxy is cheaper short of a route to the loopback, which
// Linux does not have.
type relay struct {
	oslet  int
	server netip.AddrPort // the loopback address the server listens on
	ln     *net.TCPListener
	inode  uint32 // the listener's socket, which scans must not take for a server
	init   int    // the OSlet's init: the network namespace to dial in
	allow  func(netip.Addr) bool
	log    *slog.Logger
}

// startRelay listens on own:port in the network namespace of init (OSlet k)
// and relays to server.
func startRelay(k, init int, own netip.Addr, server netip.AddrPort, allow func(netip.Addr) bool, log *slog.Logger) (*relay, error) {
	r := &relay{oslet: k, server: server, init: init, allow: allow, log: log}
	network := "tcp4"
	if own.Is6() {
		network = "tcp6"
	}
	err := inNetnsOf(init, func() error {
		ln, err := net.ListenTCP(network, net.TCPAddrFromAddrPort(netip.AddrPortFrom(own, server.Port())))
		r.ln = ln
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("oslet %d: relay for %s: %w", k, server, err)
	}
	rc, err := r.ln.SyscallConn()
	if err == nil {
		rc.Control(func(fd uintptr) {
			var st unix.Stat_t
			if unix.Fstat(int(fd), &st) == nil {
				r.inode = uint32(st.Ino)
			}
		})
	}
	go r.serve()
	return r, nil
}

func (r *relay) serve() {
	for {
		c, err := r.ln.AcceptTCP()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) && r.log != nil {
				r.log.Warn("relay: accept", "oslet", r.oslet, "server", r.server, "err", err)
			}
			return
		}
		from := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
		if !r.allow(from) {
			// A loopback server serves no one outside the machine: a
			// reset, as close to a refusal as an accepted connection gets.
			c.SetLinger(0)
			c.Close()
			continue
		}
		go r.join(c)
	}
}

// join connects to the server from inside the OSlet and copies both ways
// until both sides are done; a side that ends its writing (shutdown(2))
// ends the other's reading, as on a direct connection.
func (r *relay) join(client *net.TCPConn) {
	defer client.Close()
	var server *net.TCPConn
	err := inNetnsOf(r.init, func() error {
		c, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(r.server))
		server = c
		return err
	})
	if err != nil {
		return // the client sees its connection closed, as a refused one
	}
	defer server.Close()
	done := make(chan struct{})
	go func() {
		io.Copy(server, client)
		server.CloseWrite()
		close(done)
	}()
	io.Copy(client, server)
	client.CloseWrite()
	<-done
}

// Close stops listening; the connections in progress go on to their end.
func (r *relay) Close() {
	r.ln.Close()
}

// inNetnsOf runs fn on a thread in the network namespace of process pid, so
// that the sockets fn makes are that namespace's. A goroutine of its own
// holds the thread, so that a thread that cannot come back ends with it
// rather than serve others from the wrong namespace.
func inNetnsOf(pid int, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		back, err := enterAndRun(pid, fn)
		if back {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// enterAndRun enters pid's network namespace on this locked thread, runs fn
// and comes back; back says whether the thread is home again.
func enterAndRun(pid int, fn func() error) (back bool, err error) {
	target, err := netns.GetFromPid(pid)
	if err != nil {
		return true, fmt.Errorf("network namespace of pid %d: %w", pid, err)
	}
	defer target.Close()
	home, err := netns.Get()
	if err != nil {
		return true, fmt.Errorf("this thread's network namespace: %w", err)
	}
	defer home.Close()
	if err := netns.Set(target); err != nil {
		return true, fmt.Errorf("enter the network namespace of pid %d: %w", pid, err)
	}
	err = fn()
	if serr := netns.Set(home); serr != nil {
		return false, fmt.Errorf("return from the network namespace of pid %d: %w", pid, serr)
	}
	return true, err
}
