package network

import (
	"encoding/binary"
	"errors"
	"fmt"

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
// It takes only TCP sockets of the host's own network stack that are not
// bound to an address (a loopback source could not reach an OSlet without
// NAT). The programs hang from the root of the cgroup v2 hierarchy by BPF
// links, which the kernel removes when the boot process exits, even if it
// crashes.
type loopbackRedirect struct {
	ports, peers *ebpf.Map
	links        []link.Link
}

// RedirectPrograms are the names of the redirect's BPF programs, as the
// kernel lists them.
var RedirectPrograms = [2]string{"smpc_connect4", "smpc_peername4"}

// redirectEntries bounds the connections whose peer address the redirect
// remembers; an LRU map forgets the oldest, closed or not.
const redirectEntries = 1 << 16

// Offsets in struct bpf_sock_addr and struct bpf_sock (uapi/linux/bpf.h).
const (
	sockAddrUserIP4   = 4
	sockAddrUserPort  = 24
	sockAddrType      = 32
	sockAddrSk        = 64
	bpfSockSrcIP4     = 24
	bpfAllow          = 1
	loopbackFirstByte = 127
)

func newLoopbackRedirect() (*loopbackRedirect, error) {
	root, err := partition.Cgroup2Root()
	if err != nil {
		return nil, fmt.Errorf("loopback redirect: %w", err)
	}
	cookie, err := hostNetnsCookie()
	if err != nil {
		return nil, err
	}
	r := &loopbackRedirect{}
	if r.ports, err = ebpf.NewMap(&ebpf.MapSpec{Name: "smpc_ports", Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 1 << 16}); err != nil {
		return nil, fmt.Errorf("loopback redirect: port map: %w", err)
	}
	if r.peers, err = ebpf.NewMap(&ebpf.MapSpec{Name: "smpc_peers", Type: ebpf.LRUHash, KeySize: 8, ValueSize: 4, MaxEntries: redirectEntries}); err != nil {
		r.Close()
		return nil, fmt.Errorf("loopback redirect: peer map: %w", err)
	}
	for _, p := range []struct {
		name   string
		attach ebpf.AttachType
		insns  asm.Instructions
	}{
		{RedirectPrograms[0], ebpf.AttachCGroupInet4Connect, connectProgram(r.ports, r.peers, cookie)},
		{RedirectPrograms[1], ebpf.AttachCgroupInet4GetPeername, peernameProgram(r.peers)},
	} {
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: p.name, Type: ebpf.CGroupSockAddr, AttachType: p.attach, Instructions: p.insns, License: "GPL"})
		if err != nil {
			r.Close()
			return nil, fmt.Errorf("loopback redirect: load %s program: %w", p.attach, err)
		}
		l, err := link.AttachCgroup(link.CgroupOptions{Path: root, Attach: p.attach, Program: prog})
		// The link holds the program now.
		prog.Close()
		if err != nil {
			r.Close()
			return nil, fmt.Errorf("loopback redirect: attach %s to %s: %w", p.attach, root, err)
		}
		r.links = append(r.links, l)
	}
	return r, nil
}

// connectProgram: for a TCP socket of the host's stack with no source
// address connecting to 127.x.y.z:P, where port P is forwarded, connect to
// the OSlet's address instead, and remember 127.x.y.z for getpeername.
func connectProgram(ports, peers *ebpf.Map, hostCookie uint64) asm.Instructions {
	loopMask := binary.NativeEndian.Uint32([]byte{0xff, 0, 0, 0})
	loopNet := binary.NativeEndian.Uint32([]byte{loopbackFirstByte, 0, 0, 0})
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1), // ctx
		asm.LoadMem(asm.R2, asm.R6, sockAddrType, asm.Word),
		asm.JNE.Imm(asm.R2, unix.SOCK_STREAM, "allow"),
		asm.LoadMem(asm.R7, asm.R6, sockAddrUserIP4, asm.Word), // asked-for address, network order
		asm.Mov.Reg(asm.R2, asm.R7),
		asm.And.Imm(asm.R2, int32(loopMask)),
		asm.JNE.Imm(asm.R2, int32(loopNet), "allow"),
		asm.LoadMem(asm.R2, asm.R6, sockAddrSk, asm.DWord),
		asm.LoadMem(asm.R2, asm.R2, bpfSockSrcIP4, asm.Word),
		asm.JNE.Imm(asm.R2, 0, "allow"),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.FnGetNetnsCookie.Call(),
		asm.LoadImm(asm.R1, int64(hostCookie), asm.DWord),
		asm.JNE.Reg(asm.R0, asm.R1, "allow"),
		// to := ports[user_port]
		asm.LoadMem(asm.R2, asm.R6, sockAddrUserPort, asm.Word),
		asm.StoreMem(asm.RFP, -4, asm.R2, asm.Word),
		asm.LoadMapPtr(asm.R1, ports.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "allow"),
		asm.LoadMem(asm.R2, asm.R0, 0, asm.Word),
		asm.StoreMem(asm.R6, sockAddrUserIP4, asm.R2, asm.Word),
		// peers[socket cookie] = the asked-for address
		asm.StoreMem(asm.RFP, -12, asm.R7, asm.Word),
	}
	insns = append(insns, cookieKey(peers)...)
	return append(insns,
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -12),
		asm.Mov.Imm(asm.R4, 0), // BPF_ANY
		asm.FnMapUpdateElem.Call(),
		asm.Mov.Imm(asm.R0, bpfAllow).WithSymbol("allow"),
		asm.Return(),
	)
}

// peernameProgram: a socket the connect program redirected reports the
// address it was asked to connect to.
func peernameProgram(peers *ebpf.Map) asm.Instructions {
	insns := asm.Instructions{asm.Mov.Reg(asm.R6, asm.R1)}
	insns = append(insns, cookieKey(peers)...)
	return append(insns,
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "allow"),
		asm.LoadMem(asm.R2, asm.R0, 0, asm.Word),
		asm.StoreMem(asm.R6, sockAddrUserIP4, asm.R2, asm.Word),
		asm.Mov.Imm(asm.R0, bpfAllow).WithSymbol("allow"),
		asm.Return(),
	)
}

// cookieKey puts the socket cookie of the context in R6 on the stack as the
// key to peers, and loads R1 and R2 for a call on that map.
func cookieKey(peers *ebpf.Map) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.FnGetSocketCookie.Call(),
		asm.StoreMem(asm.RFP, -8, asm.R0, asm.DWord),
		asm.LoadMapPtr(asm.R1, peers.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -8),
	}
}

// set makes the port map the TCP forwards of fwds.
func (r *loopbackRedirect) set(fwds []forward) error {
	want := map[uint32]uint32{}
	for _, f := range fwds {
		if f.proto != "tcp" {
			continue
		}
		to := f.to.As4()
		// user_port holds the port in network order in its first two bytes.
		want[binary.NativeEndian.Uint32([]byte{byte(f.port >> 8), byte(f.port), 0, 0})] = binary.NativeEndian.Uint32(to[:])
	}
	var errs []error
	var key, val uint32
	var stale []uint32
	it := r.ports.Iterate()
	for it.Next(&key, &val) {
		if _, ok := want[key]; !ok {
			stale = append(stale, key)
		}
	}
	for _, k := range stale {
		if err := r.ports.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	for k, v := range want {
		if err := r.ports.Put(k, v); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(append(errs, it.Err())...); err != nil {
		return fmt.Errorf("loopback redirect: set ports: %w", err)
	}
	return nil
}

// Close detaches the programs and frees the maps.
func (r *loopbackRedirect) Close() {
	for _, l := range r.links {
		l.Close()
	}
	r.links = nil
	for _, m := range []*ebpf.Map{r.ports, r.peers} {
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
