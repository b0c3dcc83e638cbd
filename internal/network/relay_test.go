package network

import (
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
)

// A relay joins a connection from an allowed address to the server on the
// loopback, copies both ways with half-closes passed on, and resets one
// from any other address without joining it. It runs in this process's own network namespace:
// 127.0.0.2 stands for the OSlet's address, 127.0.0.3 for an allowed client.
func TestRelay(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a relay enters a network namespace (setns), which needs root")
	}
	server, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	go func() {
		for {
			c, err := server.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b, _ := io.ReadAll(c) // to the client's half-close
				c.Write(append([]byte("got "), b...))
			}()
		}
	}()
	addr := netip.MustParseAddrPort(server.Addr().String())
	allowed := netip.MustParseAddr("127.0.0.3")
	r, err := startRelay(1, os.Getpid(), netip.MustParseAddr("127.0.0.2"), addr, func(a netip.Addr) bool { return a == allowed }, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.inode == 0 {
		t.Error("the relay does not know its listener's socket inode")
	}
	dial := func(from string) (*net.TCPConn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		c, err := d.Dial("tcp4", r.ln.Addr().String())
		if err != nil {
			return nil, err
		}
		return c.(*net.TCPConn), nil
	}
	c, err := dial("127.0.0.3")
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("hello"))
	c.CloseWrite()
	if b, err := io.ReadAll(c); err != nil || string(b) != "got hello" {
		t.Errorf("through the relay: %q, %v; want \"got hello\"", b, err)
	}
	c.Close()

	// From another address: reset at once, the connect itself or later;
	// never joined (a joined connection would answer "got hello").
	if c, err = dial("127.0.0.4"); err == nil {
		defer c.Close()
		c.Write([]byte("hello"))
		c.CloseWrite()
		if b, _ := io.ReadAll(c); len(b) > 0 {
			t.Errorf("from an address not allowed, the server answered %q", b)
		}
	}
}
