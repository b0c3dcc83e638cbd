package network

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// listener is one listening socket as the kernel's socket diagnostics
// report it.
type listener struct {
	proto string // "tcp" or "udp"
	port  uint16
	addr  netip.Addr // the bound address; unspecified for any
	inode uint32
}

// sockDiagByFamily is SOCK_DIAG_BY_FAMILY, the request type of sock_diag.
const sockDiagByFamily = 20

// inetDiagSKV6Only is INET_DIAG_SKV6ONLY, the attribute the kernel adds to
// every IPv6 socket it reports.
const inetDiagSKV6Only = 11

// listeners asks the kernel for the listening TCP sockets and the bound,
// unconnected UDP sockets of the network namespace open as fd netns (0 for
// this process's own).
//
// The request is written here rather than through a netlink library's
// socket dump because those ask for every socket in every state: a scan
// that runs several times a second must cost the same with ten thousand
// open connections as with none, so it asks the kernel for listeners only.
func listeners(netns int) ([]listener, error) {
	c, err := netlink.Dial(unix.NETLINK_SOCK_DIAG, &netlink.Config{NetNS: netns})
	if err != nil {
		return nil, fmt.Errorf("sock_diag: %w", err)
	}
	defer c.Close()
	var all []listener
	for _, q := range []struct {
		family, proto uint8
		state         uint8
	}{
		{unix.AF_INET, unix.IPPROTO_TCP, unix.BPF_TCP_LISTEN},
		{unix.AF_INET6, unix.IPPROTO_TCP, unix.BPF_TCP_LISTEN},
		{unix.AF_INET, unix.IPPROTO_UDP, unix.BPF_TCP_CLOSE},
		{unix.AF_INET6, unix.IPPROTO_UDP, unix.BPF_TCP_CLOSE},
	} {
		// struct inet_diag_req_v2: family, protocol, ext, pad, states,
		// then a zero inet_diag_sockid (48 bytes) that matches any.
		req := make([]byte, 56)
		req[0], req[1] = q.family, q.proto
		binary.NativeEndian.PutUint32(req[4:], 1<<q.state)
		msgs, err := c.Execute(netlink.Message{
			Header: netlink.Header{Type: sockDiagByFamily, Flags: netlink.Request | netlink.Dump},
			Data:   req,
		})
		if err != nil {
			return nil, fmt.Errorf("sock_diag dump: %w", err)
		}
		proto := "tcp"
		if q.proto == unix.IPPROTO_UDP {
			proto = "udp"
		}
		for _, m := range msgs {
			if l, ok := parseDiag(m.Data, proto); ok {
				all = append(all, l)
			}
		}
	}
	return all, nil
}

// parseDiag reads a struct inet_diag_msg and its attributes. It drops
// connected UDP sockets (they receive only from their peer) and IPv6-only
// sockets, which IPv4 forwarding cannot reach.
func parseDiag(b []byte, proto string) (listener, bool) {
	const size = 72 // sizeof(struct inet_diag_msg)
	if len(b) < size {
		return listener{}, false
	}
	family := b[0]
	sport := binary.BigEndian.Uint16(b[4:])
	dport := binary.BigEndian.Uint16(b[6:])
	if sport == 0 || dport != 0 {
		return listener{}, false
	}
	var addr netip.Addr
	if family == unix.AF_INET {
		addr = netip.AddrFrom4([4]byte(b[8:12]))
	} else {
		addr = netip.AddrFrom16([16]byte(b[8:24]))
	}
	attrs, err := netlink.NewAttributeDecoder(b[size:])
	if err == nil {
		for attrs.Next() {
			if attrs.Type() == inetDiagSKV6Only && attrs.Uint8() != 0 {
				return listener{}, false
			}
		}
	}
	return listener{proto: proto, port: sport, addr: addr, inode: binary.NativeEndian.Uint32(b[68:])}, true
}

// reachable says whether a listener bound to addr takes connections
// forwarded to the OSlet address own: it is bound to any address (IPv4 or
// dual-stack IPv6) or to own itself.
func reachable(addr netip.Addr, own netip.Addr) bool {
	if addr.IsUnspecified() {
		return true
	}
	return addr.Unmap() == own
}
