package network

import (
	"net"
	"os"
	"testing"
	"time"
)

// TestListenWatch: the watch's programs load and attach on this kernel,
// and wake a waiter when a TCP server listens, a UDP server binds, and a
// listener closes.
func TestListenWatch(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("attaching cgroup BPF programs needs root")
	}
	w, err := newListenWatch()
	if err != nil {
		t.Skipf("no listen watch here: %v", err)
	}
	defer w.Close()
	woke := make(chan error, 16)
	go func() {
		for {
			err := w.wait()
			woke <- err
			if err != nil {
				return
			}
		}
	}()
	drain := func() {
		for {
			select {
			case <-woke:
			case <-time.After(100 * time.Millisecond):
				return
			}
		}
	}
	expect := func(what string, do func()) {
		t.Helper()
		drain()
		do()
		select {
		case err := <-woke:
			if err != nil {
				t.Fatalf("%s: wait: %v", what, err)
			}
		case <-time.After(2 * time.Second):
			t.Errorf("%s did not wake the watch", what)
		}
	}
	var l net.Listener
	expect("a TCP listen", func() {
		if l, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	})
	expect("a listener's close", func() { l.Close() })
	var u net.PacketConn
	expect("a UDP bind", func() {
		if u, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	})
	u.Close()
	w.Close()
	select {
	case <-woke:
	case <-time.After(2 * time.Second):
		t.Error("Close did not end a wait")
	}
}
