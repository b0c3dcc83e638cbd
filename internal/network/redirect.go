package network

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc/internal/partition"
)

// A loopbackRedirect forwards the host's TCP connections to 127.0.0.0/8 at
// connect(2) instead of packet by packet: a cgroup BPF program rewrites the
// address the socket connects to into the holding OSlet's, so the
// connection runs between the two stacks like any other, with no NAT on
// its packets (the nftables DNAT of the loopback, which stays as the path
// for everything this does not take, costs a transfer about a tenth). A
// second program gives getpeername(2) the address the program was asked
// for, so the client still sees 127.0.0.1:P as its peer.
//
// It serves the OSlets' processes too, so that localhost is the cluster's
// as on one machine: a process that connects to 127.x.y.z:P, where its own
// OSlet listens on no P, reaches the OSlet that holds P; where its own
// OSlet listens on P, it connects there as always.
//
// An OSlet's connection to the cluster's face (smpc-cluster:P) is
// redirected the same way, to the port's holder, so that it crosses the
// bridge between the two OSlets with no NAT either (the nftables path
// rewrites both its ends: DNAT to the holder, and masquerade so that the
// replies come back through the host).
//
// It takes only TCP sockets that are not bound to an address (a loopback
// source could not reach an OSlet without NAT), of the host's own network
// stack or an OSlet's: the cgroup root's programs see every process on
// the machine, and a container's localhost is not the cluster's. The
// programs hang from the root of the cgroup v2 hierarchy by BPF links,
// which the kernel removes when the boot process exits, even if it
// crashes.
//
// IPv6 has programs of its own (connect6 and the rest), with maps whose
// values are IPv6 addresses: the host's and the OSlets' ::1, and the face's
// IPv6 address, lead to the holder's IPv6 address as their IPv4 twins do.
// There the host's UDP to ::1 takes the redirect too, since the kernel has
// no route_localnet for IPv6 and no NAT can send a packet from ::1 to an
// OSlet.
type loopbackRedirect struct {
	// ports are the host's forwards (port to the holder's address),
	// osletPorts every port an OSlet holds, facePorts those the face
	// forwards (not the loopback servers'); the same with 6 for IPv6.
	// oslets are the OSlets' network namespaces (by cookie), and held the
	// ports each listens on itself, in either family.
	ports, osletPorts, facePorts, oslets, held, peers *ebpf.Map
	ports6, osletPorts6, facePorts6, peers6           *ebpf.Map
	links                                             []link.Link
}

// heldKey is a key of the held map: a network namespace's cookie and a
// port's forward key (forwardKey).
type heldKey struct {
	Netns uint64
	Port  uint32
}

// RedirectPrograms are the names of the redirect's BPF programs, as the
// kernel lists them: the connect program runs at connect(2) and at an
// unconnected UDP socket's sendmsg(2), the peer name program at
// getpeername(2) and at a UDP socket's recvmsg(2).
// The last four are IPv6's, attached for a cluster with IPv6.
var RedirectPrograms = [8]string{"smpc_connect4", "smpc_peername4", "smpc_sendmsg4", "smpc_recvmsg4",
	"smpc_connect6", "smpc_peername6", "smpc_sendmsg6", "smpc_recvmsg6"}

// RedirectAttachTypes are where they hang, in the same order.
var RedirectAttachTypes = [8]ebpf.AttachType{ebpf.AttachCGroupInet4Connect, ebpf.AttachCgroupInet4GetPeername, ebpf.AttachCGroupUDP4Sendmsg, ebpf.AttachCGroupUDP4Recvmsg,
	ebpf.AttachCGroupInet6Connect, ebpf.AttachCgroupInet6GetPeername, ebpf.AttachCGroupUDP6Sendmsg, ebpf.AttachCGroupUDP6Recvmsg}

// redirectEntries bounds the connections whose peer address the redirect
// remembers; an LRU map forgets the oldest, closed or not.
const redirectEntries = 1 << 16

// Offsets in struct bpf_sock_addr and struct bpf_sock (uapi/linux/bpf.h).
const (
	sockAddrUserIP4   = 4
	sockAddrUserIP6   = 8
	sockAddrUserPort  = 24
	sockAddrType      = 32
	sockAddrSk        = 64
	bpfSockSrcIP4     = 24
	bpfSockSrcIP6     = 28
	bpfAllow          = 1
	loopbackFirstByte = 127
)

// newLoopbackRedirect loads the programs and hangs them from the cgroup v2
// root: IPv4's, and IPv6's where face6 is valid.
func newLoopbackRedirect(face netip.Addr, subnet netip.Prefix, face6 netip.Addr, subnet6 netip.Prefix) (*loopbackRedirect, error) {
	root, err := partition.Cgroup2Root()
	if err != nil {
		return nil, fmt.Errorf("loopback redirect: %w", err)
	}
	cookie, err := hostNetnsCookie()
	if err != nil {
		return nil, err
	}
	r, err := newRedirectMaps()
	if err != nil {
		return nil, err
	}
	connect, peername := r.connectProgram(cookie, face), peernameProgram(r.peers, subnet)
	progs := []asm.Instructions{connect, peername, connect, peername}
	if face6.IsValid() {
		connect6, peername6 := r.connect6Program(cookie, face6), peername6Program(r.peers6, subnet6)
		progs = append(progs, connect6, peername6, connect6, peername6)
	}
	for i, insns := range progs {
		name, attach := RedirectPrograms[i], RedirectAttachTypes[i]
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: name, Type: ebpf.CGroupSockAddr, AttachType: attach, Instructions: insns, License: "GPL"})
		if err != nil {
			r.Close()
			return nil, fmt.Errorf("loopback redirect: load %s program: %w", attach, err)
		}
		l, err := link.AttachCgroup(link.CgroupOptions{Path: root, Attach: attach, Program: prog})
		// The link holds the program now.
		prog.Close()
		if err != nil {
			r.Close()
			return nil, fmt.Errorf("loopback redirect: attach %s to %s: %w", attach, root, err)
		}
		r.links = append(r.links, l)
	}
	return r, nil
}

// newRedirectMaps makes the redirect's maps, empty.
func newRedirectMaps() (*loopbackRedirect, error) {
	var err error
	r := &loopbackRedirect{}
	for _, m := range []struct {
		m    **ebpf.Map
		spec ebpf.MapSpec
	}{
		{&r.ports, ebpf.MapSpec{Name: "smpc_ports", Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 1 << 16}},
		{&r.osletPorts, ebpf.MapSpec{Name: "smpc_oslet_ports", Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 1 << 16}},
		{&r.facePorts, ebpf.MapSpec{Name: "smpc_face_ports", Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 1 << 16}},
		{&r.oslets, ebpf.MapSpec{Name: "smpc_oslets", Type: ebpf.Hash, KeySize: 8, ValueSize: 4, MaxEntries: 1024}},
		{&r.held, ebpf.MapSpec{Name: "smpc_held", Type: ebpf.Hash, KeySize: 12, ValueSize: 4, MaxEntries: 1 << 16}},
		// peers: a redirected socket's cookie (u64) and the port it was
		// sent to as user_port holds it (u32), to the address it asked
		// for and the holder's it was given (u32 each, network order).
		{&r.peers, ebpf.MapSpec{Name: "smpc_peers", Type: ebpf.LRUHash, KeySize: 12, ValueSize: 8, MaxEntries: redirectEntries}},
		// IPv6's: the same keys, IPv6 addresses for values.
		{&r.ports6, ebpf.MapSpec{Name: "smpc_ports6", Type: ebpf.Hash, KeySize: 4, ValueSize: 16, MaxEntries: 1 << 16}},
		{&r.osletPorts6, ebpf.MapSpec{Name: "smpc_oslet_ports6", Type: ebpf.Hash, KeySize: 4, ValueSize: 16, MaxEntries: 1 << 16}},
		{&r.facePorts6, ebpf.MapSpec{Name: "smpc_face_ports6", Type: ebpf.Hash, KeySize: 4, ValueSize: 16, MaxEntries: 1 << 16}},
		{&r.peers6, ebpf.MapSpec{Name: "smpc_peers6", Type: ebpf.LRUHash, KeySize: 12, ValueSize: 32, MaxEntries: redirectEntries}},
	} {
		if *m.m, err = ebpf.NewMap(&m.spec); err != nil {
			r.Close()
			return nil, fmt.Errorf("loopback redirect: map %s: %w", m.spec.Name, err)
		}
	}
	return r, nil
}

// connectProgram: for a socket with no source address connecting (or, UDP,
// sending) to 127.x.y.z:P, of an OSlet's stack where another OSlet holds P
// for its protocol and its own does not, or a TCP socket of the host's
// stack where port P is forwarded, connect to the holder's address
// instead; the same for an OSlet's TCP socket connecting to the face,
// face:P, where the face forwards P. (The host's UDP and the face's take
// the nftables path, which serves them already.) It remembers the address
// asked for, for getpeername and for the replies' source.
func (r *loopbackRedirect) connectProgram(hostCookie uint64, face netip.Addr) asm.Instructions {
	loopMask := binary.NativeEndian.Uint32([]byte{0xff, 0, 0, 0})
	loopNet := binary.NativeEndian.Uint32([]byte{loopbackFirstByte, 0, 0, 0})
	if !face.Is4() {
		face = netip.AddrFrom4([4]byte{255, 255, 255, 255}) // no face: no TCP connects there
	}
	f := face.As4()
	faceIP := binary.NativeEndian.Uint32(f[:])
	// The stack: -4 the forward maps' key; -32 the held map's key (netns
	// cookie, then the key again at -24); -16 the peers map's key (socket
	// cookie, then the port at -8); -40 its value (asked, then to at -36).
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1), // ctx
		asm.LoadMem(asm.R2, asm.R6, sockAddrType, asm.Word),
		asm.JEq.Imm(asm.R2, unix.SOCK_STREAM, "typed"),
		asm.JNE.Imm(asm.R2, unix.SOCK_DGRAM, "allow"),
		asm.LoadMem(asm.R7, asm.R6, sockAddrUserIP4, asm.Word).WithSymbol("typed"), // asked-for address, network order
		// R9: 1 for the face, 0 for the loopback.
		asm.Mov.Imm(asm.R9, 0),
		asm.Mov.Reg(asm.R2, asm.R7),
		asm.And.Imm(asm.R2, int32(loopMask)),
		asm.JEq.Imm(asm.R2, int32(loopNet), "unbound"),
		asm.JNE.Imm32(asm.R7, int32(faceIP), "allow"),
		asm.Mov.Imm(asm.R9, 1),
		asm.LoadMem(asm.R2, asm.R6, sockAddrSk, asm.DWord).WithSymbol("unbound"),
		asm.LoadMem(asm.R2, asm.R2, bpfSockSrcIP4, asm.Word),
		asm.JNE.Imm(asm.R2, 0, "allow"),
	}
	insns = append(insns, r.lookupHolder(hostCookie, holderMaps{host: r.ports, face: r.facePorts, oslet: r.osletPorts})...)
	insns = append(insns,
		asm.LoadMem(asm.R2, asm.R0, 0, asm.Word),
		asm.StoreMem(asm.R6, sockAddrUserIP4, asm.R2, asm.Word),
		// peers[socket cookie, port] = {asked, to}
		asm.StoreMem(asm.RFP, -40, asm.R7, asm.Word),
		asm.StoreMem(asm.RFP, -36, asm.R2, asm.Word),
	)
	return append(insns, rememberPeer(r.peers, -40)...)
}

// holderMaps are the forward maps a connect program looks a port up in:
// the host's, the face's and the OSlets' loopback's. hostUDP says whether
// the host's UDP takes the host's map too (IPv6's; IPv4 leaves it to
// dnat-local).
type holderMaps struct {
	host, face, oslet *ebpf.Map
	hostUDP           bool
}

// lookupHolder is the part of a connect program that finds the holder of
// the port asked for, for a socket of the host (the host's map, TCP only
// unless m.hostUDP; never to the face, which dnat-local serves) or of an
// OSlet (to the face, TCP only, the face's map; to its loopback, the
// OSlets' map unless held says its own OSlet serves the port). It expects
// the context in R6 and, in R9, 1 for a connection to the face and 0 for
// the loopback; it leaves the holder's address (a map value) in R0, or
// jumps to "allow" where there is none. The stack as connectProgram's.
func (r *loopbackRedirect) lookupHolder(hostCookie uint64, m holderMaps) asm.Instructions {
	host := asm.Instructions{asm.JNE.Imm(asm.R9, 0, "allow")}
	if !m.hostUDP {
		host = append(host,
			asm.LoadMem(asm.R2, asm.R6, sockAddrType, asm.Word),
			asm.JNE.Imm(asm.R2, unix.SOCK_STREAM, "allow"))
	}
	insns := asm.Instructions{
		// The forward maps' key: the port, and the protocol's bit.
		asm.LoadMem(asm.R2, asm.R6, sockAddrUserPort, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, sockAddrType, asm.Word),
		asm.JNE.Imm(asm.R3, unix.SOCK_DGRAM, "keyed"),
		asm.Or.Imm(asm.R2, int32(udpKeyBit)),
		asm.StoreMem(asm.RFP, -4, asm.R2, asm.Word).WithSymbol("keyed"),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.FnGetNetnsCookie.Call(),
		asm.Mov.Reg(asm.R8, asm.R0),
		asm.LoadImm(asm.R1, int64(hostCookie), asm.DWord),
		asm.JNE.Reg(asm.R8, asm.R1, "oslet"),
	}
	// The host's socket.
	insns = append(insns, host...)
	return append(insns,
		asm.LoadMapPtr(asm.R1, m.host.FD()),
		asm.Ja.Label("lookup"),
		// An OSlet's socket: oslets[netns] must be.
		asm.StoreMem(asm.RFP, -32, asm.R8, asm.DWord).WithSymbol("oslet"),
		asm.LoadMapPtr(asm.R1, r.oslets.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -32),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "allow"),
		asm.JEq.Imm(asm.R9, 0, "loopback"),
		// To the face: TCP only (UDP takes dnat-in).
		asm.LoadMem(asm.R2, asm.R6, sockAddrType, asm.Word),
		asm.JNE.Imm(asm.R2, unix.SOCK_STREAM, "allow"),
		asm.LoadMapPtr(asm.R1, m.face.FD()),
		asm.Ja.Label("lookup"),
		// To its loopback: held[netns, key] must not be.
		asm.LoadMem(asm.R2, asm.RFP, -4, asm.Word).WithSymbol("loopback"),
		asm.StoreMem(asm.RFP, -24, asm.R2, asm.Word),
		asm.LoadMapPtr(asm.R1, r.held.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -32),
		asm.FnMapLookupElem.Call(),
		asm.JNE.Imm(asm.R0, 0, "allow"),
		asm.LoadMapPtr(asm.R1, m.oslet.FD()),
		// to := map[key]
		asm.Mov.Reg(asm.R2, asm.RFP).WithSymbol("lookup"),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "allow"),
	)
}

// rememberPeer ends a connect program: peers[socket cookie, port] = the
// value the program built on the stack at value (the address asked for,
// then the holder's), and allow.
func rememberPeer(peers *ebpf.Map, value int16) asm.Instructions {
	return append(peerKey(peers),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, int32(value)),
		asm.Mov.Imm(asm.R4, 0), // BPF_ANY
		asm.FnMapUpdateElem.Call(),
		asm.Mov.Imm(asm.R0, bpfAllow).WithSymbol("allow"),
		asm.Return(),
	)
}

// peerKey puts the peers map's key of the socket in R6's context on the
// stack (its cookie at -16, the port at -8), and the map and the key in
// R1 and R2, for a helper call.
func peerKey(peers *ebpf.Map) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.FnGetSocketCookie.Call(),
		asm.StoreMem(asm.RFP, -16, asm.R0, asm.DWord),
		asm.LoadMem(asm.R2, asm.R6, sockAddrUserPort, asm.Word),
		asm.StoreMem(asm.RFP, -8, asm.R2, asm.Word),
		asm.LoadMapPtr(asm.R1, peers.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -16),
	}
}

// peernameProgram: a socket the connect program redirected reports the
// address it asked for as its peer's (getpeername), and as the source of
// the datagrams that come from the holder it was given (a UDP recvmsg).
// It runs at every UDP receive on the machine, so a peer outside the
// cluster's subnet, where no holder is, leaves it after a few
// instructions, before any helper or map.
func peernameProgram(peers *ebpf.Map, subnet netip.Prefix) asm.Instructions {
	netIP, mask := uint32(0xffffffff), uint32(0xffffffff) // no subnet: nothing is a holder's
	if subnet.Addr().Is4() {
		n := subnet.Masked().Addr().As4()
		m := net.CIDRMask(subnet.Bits(), 32)
		netIP, mask = binary.NativeEndian.Uint32(n[:]), binary.NativeEndian.Uint32(m)
	}
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, sockAddrUserIP4, asm.Word),
		asm.And.Imm32(asm.R2, int32(mask)),
		asm.JNE.Imm32(asm.R2, int32(netIP), "allow"),
	}
	insns = append(insns, lookupPeer(peers)...)
	return append(insns,
		asm.LoadMem(asm.R2, asm.R0, 4, asm.Word), // to
		asm.LoadMem(asm.R3, asm.R6, sockAddrUserIP4, asm.Word),
		asm.JNE.Reg(asm.R2, asm.R3, "allow"),
		asm.LoadMem(asm.R2, asm.R0, 0, asm.Word), // asked
		asm.StoreMem(asm.R6, sockAddrUserIP4, asm.R2, asm.Word),
		asm.Mov.Imm(asm.R0, bpfAllow).WithSymbol("allow"),
		asm.Return(),
	)
}

// lookupPeer is the part of a peer name program that finds what the
// connect program remembered of the socket in R6's context and the port
// of its peer: the value in R0, or a jump to "allow" where there is none.
func lookupPeer(peers *ebpf.Map) asm.Instructions {
	return append(peerKey(peers),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "allow"),
	)
}

// udpKeyBit marks a UDP port in the forward maps' keys: user_port leaves
// the upper two bytes of its word zero.
var udpKeyBit = binary.NativeEndian.Uint32([]byte{0, 0, 1, 0})

// forwardKey is the forward maps' key of a protocol's port.
func forwardKey(proto string, port uint16) uint32 {
	if proto == "udp" {
		return userPort(port) | udpKeyBit
	}
	return userPort(port)
}

// userPort is port as a sock_addr's user_port holds it: network order in
// its first two bytes.
func userPort(port uint16) uint32 {
	return binary.NativeEndian.Uint32([]byte{byte(port >> 8), byte(port), 0, 0})
}

// set makes the maps say what the forwarder found: local, the host's
// forwards; all, every port an OSlet holds; face, those the face forwards;
// netns, each OSlet's network namespace cookie; own, the ports each OSlet
// serves on its own loopback (listening at any address, or there). The
// host's and the face's maps take TCP alone; the OSlets' both protocols.
//
// For IPv6 the host's map takes UDP too (see loopbackRedirect).
func (r *loopbackRedirect) set(local, all, face []forward, netns map[int]uint64, own map[int][]portKey) error {
	byKey := func(fwds []forward, udp bool) map[uint32]uint32 {
		want := map[uint32]uint32{}
		for _, f := range fwds {
			if f.proto == "tcp" || udp {
				to := f.to.As4()
				want[forwardKey(f.proto, f.port)] = binary.NativeEndian.Uint32(to[:])
			}
		}
		return want
	}
	byKey6 := func(fwds []forward, udp bool) map[uint32][16]byte {
		want := map[uint32][16]byte{}
		for _, f := range fwds {
			if f.to6.IsValid() && (f.proto == "tcp" || udp) {
				want[forwardKey(f.proto, f.port)] = f.to6.As16()
			}
		}
		return want
	}
	oslets, held := map[uint64]uint32{}, map[heldKey]uint32{}
	for k, cookie := range netns {
		oslets[cookie] = uint32(k)
		for _, p := range own[k] {
			held[heldKey{cookie, forwardKey(p.proto, p.port)}] = 1
		}
	}
	err := errors.Join(syncMap(r.ports, byKey(local, false)), syncMap(r.osletPorts, byKey(all, true)), syncMap(r.facePorts, byKey(face, false)),
		syncMap(r.ports6, byKey6(local, true)), syncMap(r.osletPorts6, byKey6(all, true)), syncMap(r.facePorts6, byKey6(face, false)),
		syncMap(r.oslets, oslets), syncMap(r.held, held))
	if err != nil {
		return fmt.Errorf("loopback redirect: set ports: %w", err)
	}
	return nil
}

// syncMap makes m hold want: it deletes the keys want lacks and puts the
// rest.
func syncMap[K comparable, V any](m *ebpf.Map, want map[K]V) error {
	var errs []error
	var key K
	var val V
	var stale []K
	it := m.Iterate()
	for it.Next(&key, &val) {
		if _, ok := want[key]; !ok {
			stale = append(stale, key)
		}
	}
	for _, k := range stale {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	for k, v := range want {
		if err := m.Put(k, v); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(append(errs, it.Err())...)
}

// Close detaches the programs and frees the maps.
func (r *loopbackRedirect) Close() {
	for _, l := range r.links {
		l.Close()
	}
	r.links = nil
	for _, m := range []*ebpf.Map{r.ports, r.osletPorts, r.facePorts, r.oslets, r.held, r.peers, r.ports6, r.osletPorts6, r.facePorts6, r.peers6} {
		if m != nil {
			m.Close()
		}
	}
}

// hostNetnsCookie is the cookie of this process's network namespace, the
// host's: the one whose loopback the redirect serves.
func hostNetnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("loopback redirect: %w", err)
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("loopback redirect: netns cookie: %w", err)
	}
	return c, nil
}

// netnsCookieOf is the cookie of process pid's network namespace. The
// kernel tells a namespace's cookie only to a socket in it.
func netnsCookieOf(pid int) (uint64, error) {
	var cookie uint64
	err := inNetnsOf(pid, func() error {
		var err error
		cookie, err = hostNetnsCookie()
		return err
	})
	return cookie, err
}
