package network

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The table has three base chains, all NAT: dnat-in (prerouting) rewrites
// what arrives for a forwarded port on any of the host's addresses, the
// bridge's included; dnat-local (output) does the same for connections the
// host makes to itself, 127.0.0.1 included; snat (postrouting) masquerades
// the OSlets' traffic to the world, and forwarded connections whose source
// the OSlet could not answer (a loopback address, or another OSlet reaching
// the cluster's face: the reply must come back through the host to be
// un-NATed).
const (
	chainIn    = "dnat-in"
	chainLocal = "dnat-local"
	chainOut   = "snat"
)

// ipsDstNAT is IPS_DST_NAT of the conntrack status bits: the connection's
// destination was rewritten.
const ipsDstNAT = 1 << 5

// An ipFamily is what the rules of one address family differ in.
type ipFamily struct {
	table     nftables.TableFamily
	nat       uint32 // NFPROTO_IPV4 or NFPROTO_IPV6, for the NAT expression
	addrLen   uint32
	srcOffset uint32 // of the source address in the network header
	name      string // as nft names the family
}

var (
	familyIPv4 = ipFamily{nftables.TableFamilyIPv4, unix.NFPROTO_IPV4, 4, 12, "ip"}
	familyIPv6 = ipFamily{nftables.TableFamilyIPv6, unix.NFPROTO_IPV6, 16, 8, "ip6"}
)

// families are the address families the cluster has rules for: IPv4, and
// IPv6 where it has that.
func (r *Record) families() []ipFamily {
	if r.HasIPv6() {
		return []ipFamily{familyIPv4, familyIPv6}
	}
	return []ipFamily{familyIPv4}
}

func (r *Record) table(fam ipFamily) *nftables.Table {
	return &nftables.Table{Family: fam.table, Name: r.Table}
}

func natChain(t *nftables.Table, name string, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
	return &nftables.Chain{Name: name, Table: t, Type: nftables.ChainTypeNAT, Hooknum: hook, Priority: prio}
}

func (r *Record) chains(fam ipFamily) (in, local, out *nftables.Chain) {
	t := r.table(fam)
	return natChain(t, chainIn, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest),
		natChain(t, chainLocal, nftables.ChainHookOutput, nftables.ChainPriorityNATDest),
		natChain(t, chainOut, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource)
}

// createTable makes the tables (ip, and ip6 for a cluster with IPv6) and
// their chains with the masquerade rules, in one transaction.
func createTable(r *Record) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	for _, fam := range r.families() {
		t := c.AddTable(r.table(fam))
		in, local, out := r.chains(fam)
		c.AddChain(in)
		c.AddChain(local)
		c.AddChain(out)
		sub := r.prefix()
		// Forwarded connections that came from an address the OSlet
		// cannot answer directly: the host's loopback (IPv4 only: the
		// kernel sends no packet from ::1 off the host's loopback, so the
		// host's ::1 takes the connect-time redirect alone), and another
		// OSlet reaching the face.
		unanswerable := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), sub}
		if fam == familyIPv6 {
			sub = r.prefix6()
			unanswerable = []netip.Prefix{sub}
		}
		// The OSlets' own traffic out of the cluster.
		c.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: concat(
			matchSource(fam, sub), matchOutInterface(r.Bridge, expr.CmpOpNeq), masquerade())})
		for _, src := range unanswerable {
			c.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: concat(
				matchDNATed(), matchSource(fam, src), matchOutInterface(r.Bridge, expr.CmpOpEq), masquerade())})
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: create table %s: %w", r.Table, err)
	}
	return nil
}

// deleteTable removes the cluster's tables, and nothing else. It looks for
// an ip6 table whatever the record says, as a crashed boot may have made
// one before it recorded the address.
func deleteTable(r *Record) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	var gone []string
	for _, fam := range []ipFamily{familyIPv4, familyIPv6} {
		if _, err := c.ListTableOfFamily(r.Table, fam.table); err != nil {
			continue // already gone
		}
		c.DelTable(r.table(fam))
		gone = append(gone, fam.name)
	}
	if len(gone) == 0 {
		return nil
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: delete table %s (%s): %w", r.Table, strings.Join(gone, ", "), err)
	}
	return nil
}

// forward is one forwarded port: proto/port of the host to to:port, and
// over IPv6 to to6:port (the zero Addr for a cluster without IPv6).
type forward struct {
	proto string // "tcp" or "udp"
	port  uint16
	to    netip.Addr
	to6   netip.Addr
}

// setForwards replaces every forwarding rule at once (one transaction), so
// that no packet ever sees half a change: fwds for connections that come in
// (from outside the machine, and from the OSlets through the cluster's
// face), local for the host's own connections to itself.
func setForwards(r *Record, fwds, local []forward) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	for _, fam := range r.families() {
		t := r.table(fam)
		in, out, _ := r.chains(fam)
		c.FlushChain(in)
		c.FlushChain(out)
		for _, f := range fwds {
			if rule := dnatRule(fam, f, false); rule != nil {
				c.AddRule(&nftables.Rule{Table: t, Chain: in, Exprs: rule})
			}
		}
		for _, f := range local {
			if rule := dnatRule(fam, f, true); rule != nil {
				c.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: rule})
			}
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: set forwards in table %s: %w", r.Table, err)
	}
	return nil
}

// dnatRule is "fib daddr type local meta l4proto P th dport N dnat to A:N"
// in family fam, or nil where f has no address in it. The host's own
// IPv6 connections (local) to ::1 are left out: a packet from ::1 must
// never leave the host (RFC 4291), and IPv6 has no route_localnet to make
// the exception IPv4 makes, so a socket bound to ::1 is refused at once
// rather than left waiting; every other socket's ::1 takes the
// connect-time redirect.
func dnatRule(fam ipFamily, f forward, local bool) []expr.Any {
	proto := byte(unix.IPPROTO_TCP)
	if f.proto == "udp" {
		proto = unix.IPPROTO_UDP
	}
	to := f.to
	if fam == familyIPv6 {
		to = f.to6
	}
	if !to.IsValid() {
		return nil
	}
	rule := []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, unix.RTN_LOCAL)},
	}
	if fam == familyIPv6 && local {
		rule = append(rule,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: 16},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: netip.IPv6Loopback().AsSlice()})
	}
	return append(rule,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, f.port)},
		&expr.Immediate{Register: 1, Data: to.AsSlice()},
		&expr.Immediate{Register: 2, Data: binary.BigEndian.AppendUint16(nil, f.port)},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: fam.nat, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
	)
}

func matchSource(fam ipFamily, p netip.Prefix) []expr.Any {
	mask := net.CIDRMask(p.Bits(), int(fam.addrLen)*8)
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: fam.srcOffset, Len: fam.addrLen},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: fam.addrLen, Mask: mask, Xor: make([]byte, fam.addrLen)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Masked().Addr().AsSlice()},
	}
}

func matchOutInterface(name string, op expr.CmpOp) []expr.Any {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: b},
	}
}

func matchDNATed() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binary.NativeEndian.AppendUint32(nil, ipsDstNAT), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

func masquerade() []expr.Any { return []expr.Any{&expr.Masq{}} }

func concat(parts ...[]expr.Any) []expr.Any {
	var all []expr.Any
	for _, p := range parts {
		all = append(all, p...)
	}
	return all
}
