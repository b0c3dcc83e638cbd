// Package network is the cluster's one face to the network: the seed's
// NAT-like layer for "reception of network packets intended for some other
// OSlet".
//
// Each OSlet runs its own network stack (its network namespace). Boot joins
// every stack to the host by a veth pair on a bridge of the cluster's own,
// gives it an address in the cluster's subnet (and one in its IPv6 subnet)
// and a default route out through the host, where outgoing traffic is
// masqueraded. The host side of the bridge is the cluster's face: the name
// smpc-cluster resolves to it in every OSlet. A Forwarder then watches every
// OSlet's listening sockets in the kernel and forwards the cluster's port
// to the OSlet whose process listens on it, in both families, with
// nftables rules in tables of smpc's own, so that a
// forwarded packet is rewritten once by conntrack and then gets full IP-stack
// processing in the receiving OSlet, as the seed asks, without any copy in
// user space.
//
// Everything this package makes is named in a Record kept in the cluster's
// state, so that shutdown, and the next boot after a crash, remove exactly
// that and never a rule, link or address smpc did not make; the host's
// switches it turns on are the host's, shared by every cluster up
// (switches.go).
package network

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/smpc-cluster/smpc/internal/plan"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// DefaultSubnet is the cluster's subnet unless the plan or boot names
// another (plan.DefaultSubnet).
const DefaultSubnet = plan.DefaultSubnet

// NoIPv6 is the IPv6 subnet that asks for a cluster without IPv6
// (--subnet6 none): the OSlets then get no IPv6 address and smpc changes
// nothing of the host's IPv6.
const NoIPv6 = plan.NoIPv6

// ClusterHost is the name that resolves, inside every OSlet, to the
// cluster's face: the host side of the bridge.
const ClusterHost = "smpc-cluster"

// MTU is the bridge's and the veths': as large as a veth allows, near the
// loopback's 64 KiB, since the traffic they carry never leaves the machine
// on them; traffic out of the cluster meets the host interface's MTU at the
// host, as any routed traffic does (path MTU discovery for TCP).
const MTU = 65535

// OSletInterface is the name of an OSlet's end of its veth pair.
const OSletInterface = "eth0"

// Record is what a booted cluster's network is made of, kept in the
// cluster's state.
type Record struct {
	Subnet  string           `json:"subnet"`
	Gateway string           `json:"gateway"` // the cluster's face on the bridge
	Bridge  string           `json:"bridge"`
	Table   string           `json:"table"`     // the nftables tables' name (families ip and ip6)
	Addrs   map[int]string   `json:"addresses"` // OSlet index to its address
	Veths   map[int]string   `json:"veths"`     // OSlet index to the host end of its veth pair
	Moved   map[int][]string `json:"moved,omitempty"`
	// IPForwardWas is what a cluster of an earlier smpc recorded of
	// net.ipv4.ip_forward, for this one to put back if it finds such a
	// cluster crashed; the host's switches now have a file of their own
	// (switches.go).
	IPForwardWas string `json:"ip_forward_was,omitempty"`

	// The cluster's IPv6, all empty for a cluster without it: the subnet
	// (a unique local prefix), the face's address on the bridge, and each
	// OSlet's.
	Subnet6  string         `json:"subnet6,omitempty"`
	Gateway6 string         `json:"gateway6,omitempty"`
	Addrs6   map[int]string `json:"addresses6,omitempty"`
}

// Plan names the links and numbers the addresses of a cluster whose state
// dir hashes to id: the gateway takes the subnet's first host address and
// OSlet k the (k+1)th, in subnet and in subnet6 alike. An empty subnet6 is
// a unique local /64 of the cluster's own (RFC 4193, its global ID taken
// from id rather than drawn at random, so that a cluster keeps its
// addresses from boot to boot); NoIPv6 leaves IPv6 out.
func Plan(id string, subnet, subnet6 string, oslets []int) (*Record, error) {
	if subnet == "" {
		subnet = DefaultSubnet
	}
	p, err := netip.ParsePrefix(subnet)
	if err != nil || !p.Addr().Is4() {
		return nil, fmt.Errorf("network: subnet %q is not an IPv4 prefix such as %s", subnet, DefaultSubnet)
	}
	p = p.Masked()
	top := slices.Max(oslets)
	if hosts := 1<<(32-p.Bits()) - 2; p.Bits() > 30 || hosts < top+1 {
		return nil, fmt.Errorf("network: subnet %s is too small for a gateway and OSlets up to %d", p, top)
	}
	h := fnv.New32a()
	h.Write([]byte(id))
	// Interface names have at most 15 bytes: "smpc" + 6 hex digits, and
	// "-k" for the veths.
	base := fmt.Sprintf("smpc%06x", h.Sum32()&0xffffff)
	r := &Record{
		Subnet: p.String(), Bridge: base, Table: base,
		Gateway: nth(p, 1).String(),
		Addrs:   map[int]string{}, Veths: map[int]string{},
	}
	for _, k := range oslets {
		r.Addrs[k] = nth(p, k+1).String()
		r.Veths[k] = fmt.Sprintf("%s-%d", base, k)
	}
	if subnet6 == NoIPv6 {
		return r, nil
	}
	p6, err := plan.ParseSubnet6(subnet6)
	if err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	if !p6.IsValid() {
		p6 = uniqueLocal(id)
	}
	if bits := 128 - p6.Bits(); bits < 31 && 1<<bits-2 < top+1 {
		return nil, fmt.Errorf("network: subnet %s is too small for a gateway and OSlets up to %d", p6, top)
	}
	r.Subnet6, r.Gateway6, r.Addrs6 = p6.String(), nth(p6, 1).String(), map[int]string{}
	for _, k := range oslets {
		r.Addrs6[k] = nth(p6, k+1).String()
	}
	return r, nil
}

// uniqueLocal is the /64 of RFC 4193's form that the cluster of state dir
// id takes by default: fd, a 40-bit global ID, subnet 0.
func uniqueLocal(id string) netip.Prefix {
	h := fnv.New64a()
	h.Write([]byte(id))
	a := [16]byte{0xfd}
	binary.BigEndian.PutUint64(a[8:], h.Sum64()) // the low 40 bits become the global ID
	copy(a[1:6], a[11:16])
	clear(a[6:])
	return netip.PrefixFrom(netip.AddrFrom16(a), 64)
}

// nth is the nth address of prefix p (n small: it adds to the last 32 bits).
func nth(p netip.Prefix, n int) netip.Addr {
	a := p.Masked().Addr().AsSlice()
	tail := a[len(a)-4:]
	binary.BigEndian.PutUint32(tail, binary.BigEndian.Uint32(tail)+uint32(n))
	b, _ := netip.AddrFromSlice(a)
	return b
}

func (r *Record) prefix() netip.Prefix { return netip.MustParsePrefix(r.Subnet) }

// prefix6 is the IPv6 subnet; the zero Prefix without IPv6.
func (r *Record) prefix6() netip.Prefix {
	p, _ := netip.ParsePrefix(r.Subnet6)
	return p
}

// HasIPv6 says whether the cluster has IPv6 addresses.
func (r *Record) HasIPv6() bool { return r.Subnet6 != "" }

// Addr returns OSlet k's address.
func (r *Record) Addr(k int) string { return r.Addrs[k] }

// Addr6 returns OSlet k's IPv6 address, empty without IPv6.
func (r *Record) Addr6(k int) string { return r.Addrs6[k] }

// IPv6Available says whether this kernel runs IPv6 in new network
// namespaces (not built without it, not booted with ipv6.disable=1, not
// disabled by default).
func IPv6Available() bool {
	v, err := readSysctl("net/ipv6/conf/default/disable_ipv6")
	return err == nil && v == "0"
}

// CheckFree refuses a subnet that the host already uses (an address or a
// route in it), so that the cluster never shadows a network it did not
// make; the IPv6 subnet likewise.
func CheckFree(r *Record) error {
	if _, err := netlink.LinkByName(r.Bridge); err == nil {
		return fmt.Errorf("network: interface %s already exists (another cluster on the same state dir?)", r.Bridge)
	}
	if err := checkFamilyFree(netlink.FAMILY_V4, r.prefix(), "--subnet"); err != nil {
		return err
	}
	if r.HasIPv6() {
		return checkFamilyFree(netlink.FAMILY_V6, r.prefix6(), "--subnet6")
	}
	return nil
}

func checkFamilyFree(family int, sub netip.Prefix, flag string) error {
	addrs, err := consistent(func() ([]netlink.Addr, error) { return netlink.AddrList(nil, family) })
	if err != nil {
		return fmt.Errorf("network: list host addresses: %w", err)
	}
	for _, a := range addrs {
		if p, ok := prefixOf(a.IPNet); ok && p.Overlaps(sub) {
			return fmt.Errorf("network: subnet %s overlaps %s on interface %d of the host; choose another with %s", sub, p, a.LinkIndex, flag)
		}
	}
	routes, err := consistent(func() ([]netlink.Route, error) { return netlink.RouteList(nil, family) })
	if err != nil {
		return fmt.Errorf("network: list host routes: %w", err)
	}
	for _, rt := range routes {
		// The default route overlaps everything, and is where masqueraded
		// traffic goes.
		if p, ok := prefixOf(rt.Dst); ok && p.Bits() > 0 && p.Overlaps(sub) {
			return fmt.Errorf("network: subnet %s overlaps the host's route to %s; choose another with %s", sub, p, flag)
		}
	}
	return nil
}

// consistent runs a netlink dump again while the kernel says it was
// interrupted by a change (ErrDumpInterrupted: another cluster's links
// coming or going), so that a decision is made on a whole list.
func consistent[T any](dump func() ([]T, error)) ([]T, error) {
	for try := 1; ; try++ {
		list, err := dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) || try == 10 {
			return list, err
		}
	}
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	ip := n.IP
	if v4 := ip.To4(); v4 != nil && len(n.Mask) == net.IPv4len {
		ip = v4
	}
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a, ones).Masked(), true
}

// Setup makes the cluster's face: the bridge with the gateway addresses,
// the host's switches it needs (claimSwitches: forwarding, and for IPv6
// the router advertisements a forwarding host would ignore), and the
// nftables tables with masquerading; no port is forwarded yet.
func Setup(r *Record) error {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: r.Bridge, MTU: MTU}}
	if err := netlink.LinkAdd(br); err != nil {
		return fmt.Errorf("network: create bridge %s: %w", r.Bridge, err)
	}
	gw, err := netlink.ParseAddr(fmt.Sprintf("%s/%d", r.Gateway, r.prefix().Bits()))
	if err != nil {
		return fmt.Errorf("network: gateway %s: %w", r.Gateway, err)
	}
	if err := netlink.AddrAdd(br, gw); err != nil {
		return fmt.Errorf("network: address %s on %s: %w", gw, r.Bridge, err)
	}
	// Connections to 127.0.0.1 on the host are forwarded by rewriting their
	// destination in the output hook; the kernel routes a packet with a
	// loopback source out of a real interface only where route_localnet
	// allows it. Only the bridge, which smpc owns, gets it.
	if err := writeSysctl(filepath.Join("net/ipv4/conf", r.Bridge, "route_localnet"), "1"); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return fmt.Errorf("network: bring up %s: %w", r.Bridge, err)
	}
	if r.HasIPv6() {
		if err := addFace6(r, br); err != nil {
			return fmt.Errorf("network: %w", err)
		}
	}
	if err := claimSwitches(r); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	if err := createTable(r); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	return nil
}

// addFace6 gives the bridge the face's IPv6 address.
func addFace6(r *Record, br netlink.Link) error {
	gw, err := netlink.ParseAddr(fmt.Sprintf("%s/%d", r.Gateway6, r.prefix6().Bits()))
	if err != nil {
		return fmt.Errorf("gateway %s: %w", r.Gateway6, err)
	}
	// No duplicate address detection: the subnet is the cluster's alone,
	// and an address still "tentative" would refuse to be a source.
	gw.Flags = unix.IFA_F_NODAD
	if err := netlink.AddrAdd(br, gw); err != nil {
		return fmt.Errorf("address %s on %s: %w", gw, r.Bridge, err)
	}
	return nil
}

// Attach joins OSlet k, whose init has host PID pid, to the bridge: a veth
// pair whose other end is eth0 in the OSlet's namespace, with its address
// and a default route through the gateway; then it moves the network
// interfaces the plan gives the OSlet into its namespace.
func Attach(r *Record, k, pid int, interfaces []string) error {
	br, err := netlink.LinkByName(r.Bridge)
	if err != nil {
		return fmt.Errorf("network: oslet %d: bridge %s: %w", k, r.Bridge, err)
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: r.Veths[k], MasterIndex: br.Attrs().Index, MTU: MTU},
		PeerName:      OSletInterface,
		PeerNamespace: netlink.NsPid(pid),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("network: oslet %d: create veth %s: %w", k, r.Veths[k], err)
	}
	if err := netlink.LinkSetUp(veth); err != nil {
		return fmt.Errorf("network: oslet %d: bring up %s: %w", k, r.Veths[k], err)
	}
	for _, name := range interfaces {
		link, err := netlink.LinkByName(name)
		if err != nil {
			return fmt.Errorf("network: oslet %d: interface %s: %w", k, name, err)
		}
		if err := netlink.LinkSetNsPid(link, pid); err != nil {
			return fmt.Errorf("network: oslet %d: move %s into its namespace: %w", k, name, err)
		}
		if r.Moved == nil {
			r.Moved = map[int][]string{}
		}
		r.Moved[k] = append(r.Moved[k], name)
	}
	return inNamespace(pid, func(h *netlink.Handle) error {
		eth, err := h.LinkByName(OSletInterface)
		if err != nil {
			return err
		}
		addr, err := netlink.ParseAddr(fmt.Sprintf("%s/%d", r.Addrs[k], r.prefix().Bits()))
		if err != nil {
			return err
		}
		if err := h.AddrAdd(eth, addr); err != nil {
			return fmt.Errorf("address %s: %w", addr, err)
		}
		if err := h.LinkSetUp(eth); err != nil {
			return fmt.Errorf("bring up %s: %w", OSletInterface, err)
		}
		if err := h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.ParseIP(r.Gateway)}); err != nil {
			return fmt.Errorf("default route via %s: %w", r.Gateway, err)
		}
		if r.HasIPv6() {
			addr6, err := netlink.ParseAddr(fmt.Sprintf("%s/%d", r.Addrs6[k], r.prefix6().Bits()))
			if err != nil {
				return err
			}
			addr6.Flags = unix.IFA_F_NODAD
			if err := h.AddrAdd(eth, addr6); err != nil {
				return fmt.Errorf("address %s: %w", addr6, err)
			}
			if err := h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.ParseIP(r.Gateway6)}); err != nil {
				return fmt.Errorf("default route via %s: %w", r.Gateway6, err)
			}
		}
		for _, name := range interfaces {
			link, err := h.LinkByName(name)
			if err != nil {
				return err
			}
			if err := h.LinkSetUp(link); err != nil {
				return fmt.Errorf("bring up %s: %w", name, err)
			}
		}
		return nil
	})
}

func inNamespace(pid int, f func(h *netlink.Handle) error) error {
	ns, err := netns.GetFromPid(pid)
	if err != nil {
		return fmt.Errorf("network: open network namespace of pid %d: %w", pid, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("network: netlink in namespace of pid %d: %w", pid, err)
	}
	defer h.Close()
	if err := f(h); err != nil {
		return fmt.Errorf("network: in namespace of pid %d: %w", pid, err)
	}
	return nil
}

// ReturnInterfaces moves the interfaces that Attach moved into OSlets back
// to the host, while their namespaces still live: a virtual interface would
// die with its namespace, and a physical one would come back unannounced.
// inits maps OSlet index to the host PID of its init.
func ReturnInterfaces(r *Record, inits map[int]int) error {
	host, err := netns.Get()
	if err != nil {
		return fmt.Errorf("network: open host network namespace: %w", err)
	}
	defer host.Close()
	var errs []error
	for k, names := range r.Moved {
		pid, ok := inits[k]
		if !ok {
			continue
		}
		err := inNamespace(pid, func(h *netlink.Handle) error {
			for _, name := range names {
				link, err := h.LinkByName(name)
				if err != nil {
					return err
				}
				h.LinkSetDown(link)
				if err := h.LinkSetNsFd(link, int(host)); err != nil {
					return fmt.Errorf("move %s back to the host: %w", name, err)
				}
			}
			return nil
		})
		if err != nil {
			errs = append(errs, err)
		}
	}
	r.Moved = nil
	return errors.Join(errs...)
}

// Teardown removes what Setup and Attach made: the veths, the bridge and the
// nftables tables; and the host's switches go back as they were if no
// other cluster needs them (releaseSwitches). Links already
// gone (a veth dies with its OSlet's namespace) are not an error.
func Teardown(r *Record) error {
	var errs []error
	for _, name := range append(sortedValues(r.Veths), r.Bridge) {
		link, err := netlink.LinkByName(name)
		if err != nil {
			continue
		}
		// ENODEV: it went between the look-up and the delete, with the
		// namespace of an OSlet whose init was just killed.
		if err := netlink.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("network: delete %s: %w", name, err))
		}
	}
	if err := deleteTable(r); err != nil {
		errs = append(errs, fmt.Errorf("network: %w", err))
	}
	if r.IPForwardWas != "" {
		if err := writeSysctl(ipv4Forwarding, r.IPForwardWas); err != nil {
			errs = append(errs, fmt.Errorf("network: restore ip_forward: %w", err))
		}
	}
	if err := releaseSwitches(r); err != nil {
		errs = append(errs, fmt.Errorf("network: %w", err))
	}
	return errors.Join(errs...)
}

func sortedValues(m map[int]string) []string {
	var v []string
	for _, s := range m {
		v = append(v, s)
	}
	slices.Sort(v)
	return v
}

func readSysctl(name string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/proc/sys", name))
	if err != nil {
		return "", fmt.Errorf("read sysctl %s: %w", name, err)
	}
	return strings.TrimSpace(string(b)), nil
}

func writeSysctl(name, value string) error {
	if err := os.WriteFile(filepath.Join("/proc/sys", name), []byte(value), 0); err != nil {
		return fmt.Errorf("write sysctl %s: %w", name, err)
	}
	return nil
}

// HostsFile returns an /etc/hosts for the OSlets: the host's own entries,
// then the cluster's face and every OSlet by name.
func HostsFile(r *Record, hostHosts []byte) []byte {
	var b strings.Builder
	b.Write(hostHosts)
	if len(hostHosts) > 0 && hostHosts[len(hostHosts)-1] != '\n' {
		b.WriteByte('\n')
	}
	b.WriteString("# smpc: the cluster's face and its OSlets\n")
	fmt.Fprintf(&b, "%s\t%s\n", r.Gateway, ClusterHost)
	if r.HasIPv6() {
		fmt.Fprintf(&b, "%s\t%s\n", r.Gateway6, ClusterHost)
	}
	ks := make([]int, 0, len(r.Addrs))
	for k := range r.Addrs {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	for _, k := range ks {
		fmt.Fprintf(&b, "%s\toslet-%d\n", r.Addrs[k], k)
		if a := r.Addrs6[k]; a != "" {
			fmt.Fprintf(&b, "%s\toslet-%d\n", a, k)
		}
	}
	return []byte(b.String())
}
