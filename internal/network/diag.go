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
	proto  string // "tcp" or "udp"
	port   uint16
	addr   netip.Addr // the bound address; unspecified for any
	v6only bool       // an IPv6 socket that takes no IPv4 (IPV6_V6ONLY)
	inode  uint32
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
// connected UDP sockets (they receive only from their peer).
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
	l := listener{proto: proto, port: sport, addr: addr, inode: binary.NativeEndian.Uint32(b[68:])}
	attrs, err := netlink.NewAttributeDecoder(b[size:])
	if err == nil {
		for attrs.Next() {
			if attrs.Type() == inetDiagSKV6Only && attrs.Uint8() != 0 {
				l.v6only = true
			}
		}
	}
	return l, true
}

// takes4 says whether l takes IPv4 connections (or datagrams) forwarded
// to the OSlet address own: bound to any IPv4 address, to own, or to any
// address of a dual-stack IPv6 socket.
func (l listener) takes4(own netip.Addr) bool {
	switch {
	case l.addr.Is4():
		return l.addr.IsUnspecified() || l.addr == own
	case l.addr.IsUnspecified():
		return !l.v6only
	default:
		return l.addr.Is4In6() && l.addr.Unmap() == own
	}
}

// takes6 says whether l takes IPv6 connections forwarded to the OSlet's
// IPv6 address own6 (the zero Addr for a cluster without IPv6).
func (l listener) takes6(own6 netip.Addr) bool {
	if !own6.IsValid() || !l.addr.Is6() || l.addr.Is4In6() {
		return false
	}
	return l.addr.IsUnspecified() || l.addr == own6
}

// reachable says whether l takes what the cluster forwards to its OSlet,
// whose addresses are own and own6, in either family.
func (l listener) reachable(own, own6 netip.Addr) bool {
	return l.takes4(own) || l.takes6(own6)
}

// loopbackOnly says whether l is bound to its stack's loopback: 127.x.y.z
// or ::1.
func (l listener) loopbackOnly() bool {
	return l.addr.Unmap().IsLoopback()
}

// servesLoopback says whether l takes connections to its stack's loopback
// in some family: bound to any address, or to the loopback.
func (l listener) servesLoopback() bool {
	return l.addr.IsUnspecified() || l.loopbackOnly()
}

// families are the address families l takes: familyBit4, familyBit6, or
// both.
func (l listener) families() uint8 {
	switch {
	case l.addr.Is4() || l.addr.Is4In6():
		return familyBit4
	case l.addr.IsUnspecified() && !l.v6only:
		return familyBit4 | familyBit6
	default:
		return familyBit6
	}
}

// The bits of listener.families.
const (
	familyBit4 = 1 << iota
	familyBit6
)
