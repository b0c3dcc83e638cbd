package network

import (
	"encoding/binary"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// The IPv6 programs of the loopback redirect. They follow connectProgram
// and peernameProgram step by step; an address is four words here, so
// each load, test and store of one is four instructions (ip6Words).

// ip6Words are an IPv6 address's four words as a sock_addr holds them
// (network order, read as native words), for comparing with immediates.
func ip6Words(a netip.Addr) [4]int32 {
	b := a.As16()
	var w [4]int32
	for i := range w {
		w[i] = int32(binary.NativeEndian.Uint32(b[4*i:]))
	}
	return w
}

// jumpUnlessAddr6 jumps to label unless the four words at src+off equal
// want's.
func jumpUnlessAddr6(src asm.Register, off int16, want netip.Addr, label string) asm.Instructions {
	var insns asm.Instructions
	for i, w := range ip6Words(want) {
		insns = append(insns,
			asm.LoadMem(asm.R2, src, off+int16(4*i), asm.Word),
			asm.JNE.Imm32(asm.R2, w, label))
	}
	return insns
}

// copyAddr6 copies the four words at src+from to dst+to.
func copyAddr6(dst asm.Register, to int16, src asm.Register, from int16) asm.Instructions {
	var insns asm.Instructions
	for i := int16(0); i < 4; i++ {
		insns = append(insns,
			asm.LoadMem(asm.R2, src, from+4*i, asm.Word),
			asm.StoreMem(dst, to+4*i, asm.R2, asm.Word))
	}
	return insns
}

// connect6Program is connectProgram for IPv6: a socket with no source
// address connecting (or, UDP, sending) to ::1 port P, of an OSlet's stack
// where another OSlet holds P and its own does not, or of the host's stack
// where port P is forwarded (TCP and UDP both: no NAT serves the host's ::1),
// goes to the holder's IPv6 address; an OSlet's TCP socket connecting to
// the face's IPv6 address goes to the port's holder. It remembers the
// address asked for in peers6.
func (r *loopbackRedirect) connect6Program(hostCookie uint64, face netip.Addr) asm.Instructions {
	if !face.Is6() {
		face = netip.IPv6Unspecified() // no face: nothing connects to :: port P
	}
	// The stack: -72 the address asked for, -56 the holder's (the peers6
	// map's value, 32 bytes); -16 the peers6 map's key (socket cookie, then
	// the port at -8); -4 the forward maps' key; -32 the held map's key
	// (netns cookie, then the forward key again at -24).
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1), // ctx
		asm.LoadMem(asm.R2, asm.R6, sockAddrType, asm.Word),
		asm.JEq.Imm(asm.R2, unix.SOCK_STREAM, "typed"),
		asm.JNE.Imm(asm.R2, unix.SOCK_DGRAM, "allow"),
		asm.Mov.Imm(asm.R9, 0).WithSymbol("typed"), // R9: 1 for the face, 0 for the loopback
	}
	// Every IPv6 connect and send on the machine runs this: one that is to
	// neither ::1 nor the face leaves after comparing a word or two.
	insns = append(insns, jumpUnlessAddr6(asm.R6, sockAddrUserIP6, netip.IPv6Loopback(), "face")...)
	insns = append(insns, asm.Ja.Label("unbound"))
	face6 := jumpUnlessAddr6(asm.R6, sockAddrUserIP6, face, "allow")
	face6[0] = face6[0].WithSymbol("face")
	insns = append(insns, face6...)
	insns = append(insns,
		asm.Mov.Imm(asm.R9, 1),
		// The socket must have no source address of its own.
		asm.LoadMem(asm.R3, asm.R6, sockAddrSk, asm.DWord).WithSymbol("unbound"))
	for i := int16(0); i < 4; i++ {
		insns = append(insns,
			asm.LoadMem(asm.R2, asm.R3, bpfSockSrcIP6+4*i, asm.Word),
			asm.JNE.Imm(asm.R2, 0, "allow"))
	}
	// The address asked for, for peers6, before the holder's replaces it.
	insns = append(insns, copyAddr6(asm.RFP, -72, asm.R6, sockAddrUserIP6)...)
	// The host's UDP to ::1 takes the redirect too: no NAT can send a
	// packet from ::1.
	insns = append(insns, r.lookupHolder(hostCookie, holderMaps{host: r.ports6, face: r.facePorts6, oslet: r.osletPorts6, hostUDP: true})...)
	insns = append(insns, copyAddr6(asm.R6, sockAddrUserIP6, asm.R0, 0)...)
	insns = append(insns, copyAddr6(asm.RFP, -56, asm.R0, 0)...)
	// peers6[socket cookie, port] = {asked, to}
	return append(insns, rememberPeer(r.peers6, -72)...)
}

// peername6Program is peernameProgram for IPv6: a peer outside the
// cluster's IPv6 subnet leaves it at once; a redirected socket reports the
// address it asked for as the peer's, and as the source of the datagrams
// from the holder it was given.
func peername6Program(peers6 *ebpf.Map, subnet netip.Prefix) asm.Instructions {
	insns := asm.Instructions{asm.Mov.Reg(asm.R6, asm.R1)}
	if !subnet.Addr().Is6() {
		subnet = netip.MustParsePrefix("::1/128") // no subnet: no peer is a holder
	}
	mask := net.CIDRMask(subnet.Bits(), 128)
	nets := ip6Words(subnet.Masked().Addr())
	for i := range 4 {
		m := int32(binary.NativeEndian.Uint32(mask[4*i:]))
		if m == 0 {
			break
		}
		insns = append(insns,
			asm.LoadMem(asm.R2, asm.R6, sockAddrUserIP6+int16(4*i), asm.Word),
			asm.And.Imm32(asm.R2, m),
			asm.JNE.Imm32(asm.R2, nets[i], "allow"))
	}
	insns = append(insns, lookupPeer(peers6)...)
	// The peer must be the holder given (to, at 16).
	for i := int16(0); i < 4; i++ {
		insns = append(insns,
			asm.LoadMem(asm.R2, asm.R0, 16+4*i, asm.Word),
			asm.LoadMem(asm.R3, asm.R6, sockAddrUserIP6+4*i, asm.Word),
			asm.JNE.Reg(asm.R2, asm.R3, "allow"))
	}
	insns = append(insns, copyAddr6(asm.R6, sockAddrUserIP6, asm.R0, 0)...)
	return append(insns,
		asm.Mov.Imm(asm.R0, bpfAllow).WithSymbol("allow"),
		asm.Return(),
	)
}
