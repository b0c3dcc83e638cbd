package network

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/smpc-cluster/smpc/internal/statedir"
	"github.com/smpc-cluster/smpc/internal/vproc"
)

// Host is the OSlet number the port map gives the host's own stack.
const Host = statedir.HostListener

// Port is one listener in the cluster's port map.
type Port = statedir.Port

// Forwarder keeps the cluster's forwarding rules equal to the OSlets'
// listening sockets. It asks each stack's socket diagnostics for its
// listeners, a request whose cost does not grow with the number of
// connections: when the listen watch says a listener may have come or gone,
// and otherwise now and then (see Run).
type Forwarder struct {
	Record   *Record
	Inits    func() map[int]int // the OSlets up now: index to the host PID of its init
	Publish  func([]Port) error // called with the port map whenever it changes
	Interval time.Duration      // between scans while listeners change; 200ms by default (see Run)
	Log      *slog.Logger

	holders   map[portKey]int
	owners    map[ownerKey]owner
	fwds      []forward // in effect for connections that come in
	local     []forward // in effect for the host's own connections
	ports     []Port
	applied   bool // the rules in fwds are in the kernel
	published bool // ports is published
	// redirect takes the host's and the OSlets' TCP connections to
	// their loopback at connect(2); nil where the kernel has no cgroup v2
	// or BPF for it, and the nftables rules carry the host's alone.
	redirect      *loopbackRedirect
	redirectTried bool
	// netns caches each OSlet's network namespace cookie, by its init.
	netns     map[int]initNetns
	loopbacks map[int][]portKey // the ports each OSlet's localhost serves
	all       []forward         // every port an OSlet holds, loopback-bound ones too
	// relays serve the OSlets' loopback-bound TCP servers to the rest of
	// the cluster (relay.go).
	relays map[relayKey]*relay

	rescanOnce sync.Once
	rescanCh   chan struct{}
}

type portKey struct {
	proto string
	port  uint16
}

type ownerKey struct {
	oslet int
	inode uint32
}

type owner struct {
	pid     int64
	command string
}

// Run scans until ctx ends. Where the kernel runs the listen watch's BPF
// programs (cgroup v2, kernel 5.8 or later), a scan follows each bind,
// listen or release of a listener (and one more an Interval later if it
// found a change), and, while nothing happens, one as a safety net every
// watchedIdleInterval (every watchedNoReleaseInterval where the kernel,
// before 5.9, does not say when a listener closes): an idle cluster costs
// the boot process nothing measurable. Elsewhere it scans every Interval
// while listeners come and go and backs off to once a second
// (idleInterval), since a scan asks every stack (five a second cost the
// boot process about 1.4% of a CPU on the development VM).
func (f *Forwarder) Run(ctx context.Context) {
	if f.Interval == 0 {
		f.Interval = 200 * time.Millisecond
	}
	defer func() {
		if f.redirect != nil {
			f.redirect.Close()
		}
		for _, r := range f.relays {
			r.Close()
		}
	}()
	changed, idle := f.watchListeners(ctx)
	wait := f.Interval
	for {
		before := f.ports
		if err := f.Scan(); err != nil && f.Log != nil {
			f.Log.Warn("port scan", "err", err)
		}
		switch {
		case !reflect.DeepEqual(before, f.ports):
			wait = f.Interval // one more look while listeners change
		case changed != nil:
			wait = idle // the watch says when to look again
		default:
			wait = min(2*wait, max(idle, f.Interval))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		case <-changed:
			// The calls of one server's start come together (socket,
			// bind, listen): one scan takes them all.
			time.Sleep(watchSettle)
			wait = f.Interval
		case <-f.rescan():
			wait = f.Interval
		}
	}
}

// Rescan asks for a scan now: an OSlet died, and what it held goes.
func (f *Forwarder) Rescan() {
	select {
	case f.rescan() <- struct{}{}:
	default:
	}
}

func (f *Forwarder) rescan() chan struct{} {
	f.rescanOnce.Do(func() { f.rescanCh = make(chan struct{}, 1) })
	return f.rescanCh
}

// watchListeners starts the listen watch and returns the channel it
// signals on (nil where the kernel cannot run it) and how long the
// forwarder may go without a scan while it hears nothing.
func (f *Forwarder) watchListeners(ctx context.Context) (<-chan struct{}, time.Duration) {
	w, err := newListenWatch()
	if err != nil {
		if f.Log != nil {
			f.Log.Info("no listen watch: scanning every second", "err", err)
		}
		return nil, idleInterval
	}
	idle := watchedIdleInterval
	if !w.releases {
		idle = watchedNoReleaseInterval
	}
	changed := make(chan struct{}, 1)
	go func() {
		<-ctx.Done()
		w.Close()
	}()
	go func() {
		for w.wait() == nil {
			select {
			case changed <- struct{}{}:
			default: // a scan is due already
			}
		}
	}()
	return changed, idle
}

const (
	// idleInterval is how often the forwarder scans while nothing changes,
	// without the listen watch: a new listener is forwarded within it.
	idleInterval = time.Second
	// watchedIdleInterval is the safety net's, with the watch: a scan
	// costs the boot process some 3 ms on the development VM and some
	// 120 ms in the emulated guest (4 OSlets), so every 30 s was 0.4% of
	// a CPU there. The watch sees every bind, listen and release, and a
	// wake-up it drops while its ring is full is followed by the scan of
	// the ones it read; the net is for what nobody foresaw.
	watchedIdleInterval = 5 * time.Minute
	// watchedNoReleaseInterval is the net's where the kernel has no
	// sock_release programs (before 5.9): a closed listener loses its
	// forward only at a scan.
	watchedNoReleaseInterval = 30 * time.Second
	// watchSettle lets a server's bind and listen both happen before the
	// scan they wake, and bounds the scans that a storm of binds on the
	// host can cause to twenty a second.
	watchSettle = 50 * time.Millisecond
)

// Scan reads every stack's listeners once, decides who holds each port,
// and applies and publishes what changed.
func (f *Forwarder) Scan() error {
	if f.holders == nil {
		f.holders, f.owners = map[portKey]int{}, map[ownerKey]owner{}
	}
	inits := f.Inits()
	seen := map[portKey]map[int]listener{}
	// The families each stack's listeners on a port take, whichever of
	// them seen keeps.
	families := map[portKey]map[int]uint8{}
	addFamilies := func(k int, l listener) {
		key := portKey{l.proto, l.port}
		if families[key] == nil {
			families[key] = map[int]uint8{}
		}
		families[key][k] |= l.families()
	}
	note := func(k int, l listener) {
		key := portKey{l.proto, l.port}
		if seen[key] == nil {
			seen[key] = map[int]listener{}
		}
		if _, dup := seen[key][k]; !dup {
			seen[key][k] = l
		}
	}
	hostLs, err := listeners(0)
	if err != nil {
		return fmt.Errorf("host listeners: %w", err)
	}
	for _, l := range hostLs {
		note(Host, l)
		addFamilies(Host, l)
	}
	var errs []error
	loopbacks := map[int][]portKey{}
	// The TCP servers bound to an OSlet's loopback alone.
	loopOnly := map[portKey]map[int][]listener{}
	for k, pid := range inits {
		own, _ := netip.ParseAddr(f.Record.Addrs[k])
		own6, _ := netip.ParseAddr(f.Record.Addr6(k))
		ls, err := listenersOf(pid)
		if err != nil {
			// The OSlet died since Inits: it holds nothing.
			if _, alive := f.Inits()[k]; alive {
				errs = append(errs, fmt.Errorf("oslet %d: %w", k, err))
			}
			continue
		}
		for _, l := range ls {
			key := portKey{l.proto, l.port}
			if f.isRelay(k, l) {
				continue // smpc's own relay, not a server
			}
			// Its OSlet's own localhost:P stays its own, whatever
			// else becomes of the listener.
			if l.servesLoopback() {
				loopbacks[k] = append(loopbacks[k], key)
			}
			switch {
			case l.reachable(own, own6):
				note(k, l)
			case l.proto == "tcp" && l.loopbackOnly() && (l.addr.Unmap().Is4() || own6.IsValid()):
				if loopOnly[key] == nil {
					loopOnly[key] = map[int][]listener{}
				}
				loopOnly[key][k] = append(loopOnly[key][k], l)
			default:
				continue // in its own stack alone
			}
			addFamilies(k, l)
		}
		slices.SortFunc(loopbacks[k], cmpKey)
		loopbacks[k] = slices.Compact(loopbacks[k])
	}
	// A TCP server bound to its OSlet's loopback alone is the cluster's
	// localhost's, through a relay: where its OSlet has no other listener
	// on the port.
	scoped := map[portKey]map[int]bool{}
	for key, by := range loopOnly {
		for k, ls := range by {
			if _, reachable := seen[key][k]; reachable {
				continue
			}
			note(k, ls[0])
			if scoped[key] == nil {
				scoped[key] = map[int]bool{}
			}
			scoped[key][k] = true
		}
	}
	// The first to listen keeps the port; among new claims in one tick,
	// the host, then the lowest OSlet.
	holders := map[portKey]int{}
	var all, fwds, local []forward
	relays := map[relayKey]netip.AddrPort{}
	for key, by := range seen {
		h, ok := f.holders[key]
		if _, still := by[h]; !ok || !still {
			h = slices.Min(keys(by))
		}
		holders[key] = h
		if h != Host {
			to, _ := netip.ParseAddr(f.Record.Addrs[h])
			to6, _ := netip.ParseAddr(f.Record.Addr6(h))
			fwd := forward{proto: key.proto, port: key.port, to: to, to6: to6}
			all = append(all, fwd)
			if scoped[key][h] {
				// Not from outside the machine: a loopback server's, in
				// each family it is bound in.
				for _, l := range loopOnly[key][h] {
					relays[relayKey{h, key.port, !l.addr.Unmap().Is4()}] = netip.AddrPortFrom(l.addr.Unmap(), key.port)
				}
			} else {
				fwds = append(fwds, fwd)
			}
			// The conflict rule: the host's own clients reach the host's
			// server; everyone else reaches whoever listened first.
			if _, hostServes := by[Host]; !hostServes {
				local = append(local, fwd)
			}
		}
	}
	if err := f.syncRelays(relays, inits); err != nil {
		errs = append(errs, err)
	}
	f.holders = holders
	byPort := func(a, b forward) int { return cmpKey(portKey{a.proto, a.port}, portKey{b.proto, b.port}) }
	slices.SortFunc(all, byPort)
	slices.SortFunc(fwds, byPort)
	slices.SortFunc(local, byPort)
	if !f.redirectTried {
		f.redirectTried = true
		face, _ := netip.ParseAddr(f.Record.Gateway)
		subnet, _ := netip.ParsePrefix(f.Record.Subnet)
		face6, _ := netip.ParseAddr(f.Record.Gateway6)
		subnet6, _ := netip.ParsePrefix(f.Record.Subnet6)
		if f.redirect, err = newLoopbackRedirect(face, subnet, face6, subnet6); err != nil && f.Log != nil {
			f.Log.Warn("connections to the loopback are forwarded by NAT alone", "err", err)
		}
	}
	netns := f.netnsCookies(inits)
	if !f.applied || !slices.Equal(fwds, f.fwds) || !slices.Equal(local, f.local) || !slices.Equal(all, f.all) || !maps.EqualFunc(loopbacks, f.loopbacks, slices.Equal) {
		if err := setForwards(f.Record, fwds, local); err != nil {
			return errors.Join(append(errs, err)...)
		}
		if f.redirect != nil {
			if err := f.redirect.set(local, all, fwds, netns, loopbacks); err != nil {
				return errors.Join(append(errs, err)...)
			}
		}
		f.loopbacks, f.all = loopbacks, all
		fams := f.Record.families()
		if err := errors.Join(forgetUDPFlows(fams, f.fwds, fwds), forgetUDPFlows(fams, f.local, local)); err != nil {
			errs = append(errs, err) // the forward is in; only early flows miss it
		}
		f.fwds, f.local, f.applied = fwds, local, true
	}
	ports := f.portMap(seen, holders, inits, scoped, families)
	if (!f.published || !reflect.DeepEqual(ports, f.ports)) && f.Publish != nil {
		if err := f.Publish(ports); err != nil {
			errs = append(errs, err)
		} else {
			f.ports, f.published = ports, true
		}
	}
	return errors.Join(errs...)
}

// portMap lists every OSlet listener, and the host's only where they share
// a port with an OSlet: the host's other ports are not the cluster's
// business.
func (f *Forwarder) portMap(seen map[portKey]map[int]listener, holders map[portKey]int, inits map[int]int, scoped map[portKey]map[int]bool, families map[portKey]map[int]uint8) []Port {
	listed := func(by map[int]listener) bool {
		_, host := by[Host]
		return !host || len(by) > 1
	}
	// Owners not known yet, by OSlet: one walk of /proc for each.
	unknown := map[int]map[uint32]bool{}
	for _, by := range seen {
		for k, l := range by {
			if _, cached := f.owners[ownerKey{k, l.inode}]; listed(by) && !cached {
				if unknown[k] == nil {
					unknown[k] = map[uint32]bool{}
				}
				unknown[k][l.inode] = true
			}
		}
	}
	for k, inodes := range unknown {
		for inode, o := range findOwners(k, inits[k], inodes) {
			f.owners[ownerKey{k, inode}] = o
		}
	}
	var ports []Port
	live := map[ownerKey]bool{}
	for key, by := range seen {
		if !listed(by) {
			continue
		}
		for k, l := range by {
			ok := ownerKey{k, l.inode}
			live[ok] = true
			o := f.owners[ok]
			h := holders[key]
			_, hostServes := by[Host]
			p := Port{Proto: key.proto, Port: key.port, OSlet: k, PID: o.pid, Command: o.command,
				Holder: h, Forwarded: h == k && k != Host, HostClients: k == Host && h != Host, NotFromHost: h == k && k != Host && hostServes}
			if scoped[key][k] {
				p.Scope = statedir.ScopeLoopback
			}
			fams := families[key][k]
			if fams&familyBit4 != 0 {
				p.Families = append(p.Families, "ipv4")
			}
			if fams&familyBit6 != 0 {
				p.Families = append(p.Families, "ipv6")
			}
			ports = append(ports, p)
		}
	}
	for ok := range f.owners {
		if !live[ok] {
			delete(f.owners, ok)
		}
	}
	slices.SortFunc(ports, func(a, b Port) int {
		if c := cmpKey(portKey{a.Proto, a.Port}, portKey{b.Proto, b.Port}); c != 0 {
			return c
		}
		return a.OSlet - b.OSlet
	})
	return ports
}

func cmpKey(a, b portKey) int {
	if a.port != b.port {
		return int(a.port) - int(b.port)
	}
	return strings.Compare(a.proto, b.proto)
}

func keys(m map[int]listener) []int {
	ks := make([]int, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

func listenersOf(pid int) ([]listener, error) {
	ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	return listeners(int(ns.Fd()))
}

// findOwners finds the processes holding the sockets inodes in OSlet k
// (whose init has host PID init; the host itself for Host), by the socket
// links in /proc of the processes that share the OSlet's network namespace.
// Only scans that see a new listener pay for this walk, once per OSlet.
func findOwners(k, init int, inodes map[uint32]bool) map[uint32]owner {
	nsPath := "/proc/self/ns/net"
	if k != Host {
		nsPath = fmt.Sprintf("/proc/%d/ns/net", init)
	}
	ns, err := os.Readlink(nsPath)
	if err != nil {
		return nil
	}
	found := map[uint32]owner{}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		dir := filepath.Join("/proc", p.Name())
		if l, err := os.Readlink(filepath.Join(dir, "ns/net")); err != nil || l != ns {
			continue
		}
		fds, _ := os.ReadDir(filepath.Join(dir, "fd"))
		for _, fd := range fds {
			l, _ := os.Readlink(filepath.Join(dir, "fd", fd.Name()))
			var inode uint32
			if _, err := fmt.Sscanf(l, "socket:[%d]", &inode); err != nil || !inodes[inode] {
				continue
			}
			if _, dup := found[inode]; dup {
				continue // a socket shared by a parent and its children: the first holder names it
			}
			comm, _ := os.ReadFile(filepath.Join(dir, "comm"))
			o := owner{pid: int64(pid), command: strings.TrimSpace(string(comm))}
			if k != Host {
				o.pid = clusterPID(pid)
			}
			found[inode] = o
		}
		if len(found) == len(inodes) {
			break
		}
	}
	return found
}

// clusterPID reads a host process's PID in the cluster's PID namespace (the
// last NSpid), the number every OSlet and smpc know it by.
func clusterPID(hostPID int) int64 { return int64(vproc.ClusterPID(hostPID)) }

// WritePorts saves the port map where smpc ports reads it, atomically.
func WritePorts(path string, ports []Port) error {
	if ports == nil {
		ports = []Port{}
	}
	b, _ := json.Marshal(ports)
	tmp := path + ".new"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("write port map: %w", err)
	}
	return os.Rename(tmp, path)
}

// initNetns is an OSlet's network namespace cookie, found from its init.
type initNetns struct {
	init   int
	cookie uint64
}

// netnsCookies returns each running OSlet's network namespace cookie, as
// the redirect knows the OSlets' sockets by. A cookie stays while the
// OSlet's init does; one that cannot be read leaves the OSlet out (its
// processes' localhost is then their own alone).
func (f *Forwarder) netnsCookies(inits map[int]int) map[int]uint64 {
	if f.redirect == nil {
		return nil
	}
	if f.netns == nil {
		f.netns = map[int]initNetns{}
	}
	out := map[int]uint64{}
	for k, pid := range inits {
		n, ok := f.netns[k]
		if !ok || n.init != pid {
			c, err := netnsCookieOf(pid)
			if err != nil {
				if f.Log != nil {
					f.Log.Warn("oslet's localhost is its own alone", "oslet", k, "err", err)
				}
				continue
			}
			n = initNetns{pid, c}
			f.netns[k] = n
		}
		out[k] = n.cookie
	}
	for k := range f.netns {
		if _, ok := inits[k]; !ok {
			delete(f.netns, k)
		}
	}
	return out
}

// relayKey names a relay: the OSlet, the port it serves, and its family.
type relayKey struct {
	oslet int
	port  uint16
	ipv6  bool
}

// isRelay says whether l, of OSlet k, is smpc's own relay.
func (f *Forwarder) isRelay(k int, l listener) bool {
	for _, v6 := range []bool{false, true} {
		if r := f.relays[relayKey{k, l.port, v6}]; r != nil && r.inode == l.inode && l.proto == "tcp" {
			return true
		}
	}
	return false
}

// syncRelays makes the relays those of want (a loopback server's address
// by OSlet and port), on the OSlets' current inits.
func (f *Forwarder) syncRelays(want map[relayKey]netip.AddrPort, inits map[int]int) error {
	for key, r := range f.relays {
		if server, ok := want[key]; !ok || server != r.server || inits[key.oslet] != r.init {
			r.Close()
			delete(f.relays, key)
		}
	}
	if f.relays == nil {
		f.relays = map[relayKey]*relay{}
	}
	var errs []error
	for key, server := range want {
		if _, ok := f.relays[key]; ok {
			continue
		}
		addr := f.Record.Addrs[key.oslet]
		if key.ipv6 {
			addr = f.Record.Addr6(key.oslet)
		}
		own, err := netip.ParseAddr(addr)
		if err != nil {
			errs = append(errs, fmt.Errorf("oslet %d: no address: %w", key.oslet, err))
			continue
		}
		r, err := startRelay(key.oslet, inits[key.oslet], own, server, f.clusterAddress, f.Log)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		f.relays[key] = r
	}
	return errors.Join(errs...)
}

// clusterAddress says whether a is one of the cluster's own addresses: the
// host's face on the bridge or an OSlet's.
func (f *Forwarder) clusterAddress(a netip.Addr) bool {
	if g, err := netip.ParseAddr(f.Record.Gateway); err == nil && g == a {
		return true
	}
	if g, err := netip.ParseAddr(f.Record.Gateway6); err == nil && g == a {
		return true
	}
	for _, addrs := range []map[int]string{f.Record.Addrs, f.Record.Addrs6} {
		for _, s := range addrs {
			if o, err := netip.ParseAddr(s); err == nil && o == a {
				return true
			}
		}
	}
	return false
}
