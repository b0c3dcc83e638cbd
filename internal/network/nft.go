package network

import (
	"encoding/binary"
	"fmt"
	"net/netip"

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

func (r *Record) table() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyIPv4, Name: r.Table}
}

func natChain(t *nftables.Table, name string, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
	return &nftables.Chain{Name: name, Table: t, Type: nftables.ChainTypeNAT, Hooknum: hook, Priority: prio}
}

func (r *Record) chains() (in, local, out *nftables.Chain) {
	t := r.table()
	return natChain(t, chainIn, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest),
		natChain(t, chainLocal, nftables.ChainHookOutput, nftables.ChainPriorityNATDest),
		natChain(t, chainOut, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource)
}

// createTable makes the table and its chains with the masquerade rules, in
// one transaction.
func createTable(r *Record) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	t := c.AddTable(r.table())
	in, local, out := r.chains()
	c.AddChain(in)
	c.AddChain(local)
	c.AddChain(out)
	sub := r.prefix()
	// The OSlets' own traffic out of the cluster.
	c.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: concat(
		matchSource(sub), matchOutInterface(r.Bridge, expr.CmpOpNeq), masquerade())})
	// Forwarded connections that came from an address the OSlet cannot
	// answer directly.
	for _, src := range []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), sub} {
		c.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: concat(
			matchDNATed(), matchSource(src), matchOutInterface(r.Bridge, expr.CmpOpEq), masquerade())})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: create table ip %s: %w", r.Table, err)
	}
	return nil
}

// deleteTable removes the cluster's table, and nothing else.
func deleteTable(r *Record) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	if _, err := c.ListTableOfFamily(r.Table, nftables.TableFamilyIPv4); err != nil {
		return nil // already gone
	}
	c.DelTable(r.table())
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: delete table ip %s: %w", r.Table, err)
	}
	return nil
}

// forward is one forwarded port: proto/port of the host to addr:port.
type forward struct {
	proto string // "tcp" or "udp"
	port  uint16
	to    netip.Addr
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
	t := r.table()
	in, out, _ := r.chains()
	c.FlushChain(in)
	c.FlushChain(out)
	for _, f := range fwds {
		c.AddRule(&nftables.Rule{Table: t, Chain: in, Exprs: dnatRule(f)})
	}
	for _, f := range local {
		c.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: dnatRule(f)})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: set forwards in table ip %s: %w", r.Table, err)
	}
	return nil
}

// dnatRule is "fib daddr type local meta l4proto P th dport N dnat to A:N".
func dnatRule(f forward) []expr.Any {
	proto := byte(unix.IPPROTO_TCP)
	if f.proto == "udp" {
		proto = unix.IPPROTO_UDP
	}
	addr := f.to.As4()
	return []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, unix.RTN_LOCAL)},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, f.port)},
		&expr.Immediate{Register: 1, Data: addr[:]},
		&expr.Immediate{Register: 2, Data: binary.BigEndian.AppendUint16(nil, f.port)},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
	}
}

func matchSource(p netip.Prefix) []expr.Any {
	mask := make([]byte, 4)
	binary.BigEndian.PutUint32(mask, ^uint32(0)<<(32-p.Bits()))
	a := p.Masked().Addr().As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]},
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
