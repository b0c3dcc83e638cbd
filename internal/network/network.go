// Package network is the cluster's one face to the network: the seed's
// NAT-like layer for "reception of network packets intended for some other
// OSlet".
//
// Each OSlet runs its own network stack (its network namespace). Boot joins
// every stack to the host by a veth pair on a bridge of the cluster's own,
// gives it an address in the cluster's subnet and a default route out
// through the host, where outgoing traffic is masqueraded. The host side of
// the bridge is the cluster's face: the name smpc-cluster resolves to it in
// every OSlet. A Forwarder then watches every OSlet's listening sockets in
// the kernel and forwards the cluster's port to the OSlet whose process
// listens on it, with nftables rules in a table of smpc's own, so that a
// forwarded packet is rewritten once by conntrack and then gets full IP-stack
// processing in the receiving OSlet, as the seed asks, without any copy in
// user space.
//
// Everything this package makes is named in a Record kept in the cluster's
// state, so that shutdown, and the next boot after a crash, remove exactly
// that and never a rule, link or address smpc did not make.
package network

import (
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
	Table   string           `json:"table"`     // the nftables table (family ip)
	Addrs   map[int]string   `json:"addresses"` // OSlet index to its address
	Veths   map[int]string   `json:"veths"`     // OSlet index to the host end of its veth pair
	Moved   map[int][]string `json:"moved,omitempty"`
	// IPForwardWas is net.ipv4.ip_forward before boot, put back at shutdown.
	IPForwardWas string `json:"ip_forward_was,omitempty"`
}

// Plan names the links and numbers the addresses of a cluster whose state
// dir hashes to id: the gateway takes the subnet's first host address and
// OSlet k the (k+1)th.
func Plan(id string, subnet string, oslets []int) (*Record, error) {
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
	return r, nil
}

func nth(p netip.Prefix, n int) netip.Addr {
	a := p.Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func (r *Record) prefix() netip.Prefix { return netip.MustParsePrefix(r.Subnet) }

// Addr returns OSlet k's address.
func (r *Record) Addr(k int) string { return r.Addrs[k] }

// CheckFree refuses a subnet that the host already uses (an address or a
// route in it), so that the cluster never shadows a network it did not
// make.
func CheckFree(r *Record) error {
	if _, err := netlink.LinkByName(r.Bridge); err == nil {
		return fmt.Errorf("network: interface %s already exists (another cluster on the same state dir?)", r.Bridge)
	}
	sub := r.prefix()
	addrs, err := consistent(func() ([]netlink.Addr, error) { return netlink.AddrList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return fmt.Errorf("network: list host addresses: %w", err)
	}
	for _, a := range addrs {
		if p, ok := prefixOf(a.IPNet); ok && p.Overlaps(sub) {
			return fmt.Errorf("network: subnet %s overlaps %s on interface %d of the host; choose another with --subnet", sub, p, a.LinkIndex)
		}
	}
	routes, err := consistent(func() ([]netlink.Route, error) { return netlink.RouteList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return fmt.Errorf("network: list host routes: %w", err)
	}
	for _, rt := range routes {
		// The default route overlaps everything, and is where masqueraded
		// traffic goes.
		if p, ok := prefixOf(rt.Dst); ok && p.Bits() > 0 && p.Overlaps(sub) {
			return fmt.Errorf("network: subnet %s overlaps the host's route to %s; choose another with --subnet", sub, p)
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
	a, ok := netip.AddrFromSlice(n.IP.To4())
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a, ones).Masked(), true
}

// Setup makes the cluster's face: the bridge with the gateway address, IPv4
// forwarding, and the nftables table with masquerading; no port is
// forwarded yet.
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
	was, err := readSysctl("net/ipv4/ip_forward")
	if err != nil {
		return fmt.Errorf("network: %w", err)
	}
	if was != "1" {
		if err := writeSysctl("net/ipv4/ip_forward", "1"); err != nil {
			return fmt.Errorf("network: enable IPv4 forwarding: %w", err)
		}
		r.IPForwardWas = was
	}
	if err := createTable(r); err != nil {
		return fmt.Errorf("network: %w", err)
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
// nftables table, and puts IPv4 forwarding back as it was. Links already
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
		if err := writeSysctl("net/ipv4/ip_forward", r.IPForwardWas); err != nil {
			errs = append(errs, fmt.Errorf("network: restore ip_forward: %w", err))
		}
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
	ks := make([]int, 0, len(r.Addrs))
	for k := range r.Addrs {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	for _, k := range ks {
		fmt.Fprintf(&b, "%s\toslet-%d\n", r.Addrs[k], k)
	}
	return []byte(b.String())
}
