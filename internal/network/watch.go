package network

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc/internal/partition"
)

// A listenWatch tells the forwarder when the set of listening sockets may
// have changed, so that an idle cluster is not scanned: the kernel sends
// no netlink event for a new listener, but it runs cgroup BPF programs at
// the moments that matter, and these put a wake-up in a ring buffer that
// the forwarder blocks on:
//
//   - a TCP socket that starts listening (sock_ops, BPF_SOCK_OPS_TCP_LISTEN_CB);
//   - a socket bound to a port (post_bind, IPv4 and IPv6): a UDP server;
//   - a listening TCP socket or an unconnected UDP one that is released
//     (sock_release, kernel 5.9 and later; without it a closed listener
//     loses its forward at the next periodic scan).
//
// Like the loopback redirect, the programs hang from the root of the
// cgroup v2 hierarchy by BPF links, so they see every process of the host
// and of every OSlet, and go when the boot process exits.
type listenWatch struct {
	events *ebpf.Map
	reader *ringbuf.Reader
	links  []link.Link
	// releases says whether the kernel runs the sock_release program, so
	// that a closed listener is seen without a scan.
	releases bool
}

// Offsets in struct bpf_sock and struct bpf_sock_ops (uapi/linux/bpf.h).
const (
	bpfSockProtocol    = 12
	bpfSockDstPort     = 48
	bpfSockState       = 72
	sockOpsOp          = 0
	sockOpsTCPListenCB = 11 // BPF_SOCK_OPS_TCP_LISTEN_CB
	tcpStateListen     = 10 // TCP_LISTEN
	watchRingBytes     = 4096
	watchEventBytes    = 8
	watchEventSlot     = -8 // on the program's stack
)

// WatchPrograms are the names of the listen watch's BPF programs, as the
// kernel lists them (smpc_release only where the kernel has sock_release).
var WatchPrograms = [4]string{"smpc_listen", "smpc_bind4", "smpc_bind6", "smpc_release"}

// WatchAttachTypes are where they hang, in the same order.
var WatchAttachTypes = [4]ebpf.AttachType{ebpf.AttachCGroupSockOps, ebpf.AttachCGroupInet4PostBind, ebpf.AttachCGroupInet6PostBind, ebpf.AttachCgroupInetSockRelease}

func newListenWatch() (*listenWatch, error) {
	root, err := partition.Cgroup2Root()
	if err != nil {
		return nil, fmt.Errorf("listen watch: %w", err)
	}
	w := &listenWatch{}
	if w.events, err = ebpf.NewMap(&ebpf.MapSpec{Name: "smpc_listen_ev", Type: ebpf.RingBuf, MaxEntries: watchRingBytes}); err != nil {
		return nil, fmt.Errorf("listen watch: ring buffer: %w", err)
	}
	for _, p := range []struct {
		name     string
		typ      ebpf.ProgramType
		attach   ebpf.AttachType
		insns    asm.Instructions
		optional bool
	}{
		{WatchPrograms[0], ebpf.SockOps, WatchAttachTypes[0], w.listenProgram(), false},
		{WatchPrograms[1], ebpf.CGroupSock, WatchAttachTypes[1], w.bindProgram(), false},
		{WatchPrograms[2], ebpf.CGroupSock, WatchAttachTypes[2], w.bindProgram(), false},
		{WatchPrograms[3], ebpf.CGroupSock, WatchAttachTypes[3], w.releaseProgram(), true},
	} {
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: p.name, Type: p.typ, AttachType: p.attach, Instructions: p.insns, License: "GPL"})
		if err == nil {
			var l link.Link
			l, err = link.AttachCgroup(link.CgroupOptions{Path: root, Attach: p.attach, Program: prog})
			prog.Close() // the link holds it
			if err == nil {
				w.links = append(w.links, l)
				w.releases = w.releases || p.attach == ebpf.AttachCgroupInetSockRelease
				continue
			}
		}
		if p.optional {
			continue
		}
		w.Close()
		return nil, fmt.Errorf("listen watch: %s program: %w", p.attach, err)
	}
	if w.reader, err = ringbuf.NewReader(w.events); err != nil {
		w.Close()
		return nil, fmt.Errorf("listen watch: ring buffer reader: %w", err)
	}
	return w, nil
}

// notify is the tail of every program: put an 8-byte wake-up in the ring
// buffer (its content does not matter: the forwarder rescans) and let the
// operation go on.
func (w *listenWatch) notify() asm.Instructions {
	return asm.Instructions{
		asm.StoreImm(asm.RFP, watchEventSlot, 0, asm.DWord),
		asm.LoadMapPtr(asm.R1, w.events.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, watchEventSlot),
		asm.Mov.Imm(asm.R3, watchEventBytes),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnRingbufOutput.Call(),
		asm.Mov.Imm(asm.R0, bpfAllow).WithSymbol("allow"),
		asm.Return(),
	}
}

// listenProgram: on a TCP socket's listen(2).
func (w *listenWatch) listenProgram() asm.Instructions {
	return append(asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, sockOpsOp, asm.Word),
		asm.JNE.Imm(asm.R2, sockOpsTCPListenCB, "allow"),
	}, w.notify()...)
}

// bindProgram: on every bind(2) to a port, which is rare next to
// connections (they take their ports without a bind).
func (w *listenWatch) bindProgram() asm.Instructions {
	return w.notify()
}

// releaseProgram: on the release of a listening TCP socket, or of a UDP
// socket with no peer (a server's), not on every connection's.
func (w *listenWatch) releaseProgram() asm.Instructions {
	return append(asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, bpfSockProtocol, asm.Word),
		// The kernel's conversion of this field leaves other bits of the
		// sock above the protocol's (seen: 0x106 for TCP on 6.x).
		asm.And.Imm(asm.R2, 0xff),
		asm.JEq.Imm(asm.R2, unix.IPPROTO_UDP, "udp"),
		asm.JNE.Imm(asm.R2, unix.IPPROTO_TCP, "allow"),
		asm.LoadMem(asm.R2, asm.R1, bpfSockState, asm.Word),
		asm.JNE.Imm(asm.R2, tcpStateListen, "allow"),
		asm.Ja.Label("notify"),
		asm.LoadMem(asm.R2, asm.R1, bpfSockDstPort, asm.Word).WithSymbol("udp"),
		asm.JNE.Imm(asm.R2, 0, "allow"),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("notify"),
	}, w.notify()...)
}

// wait blocks until a program reports a change, or the watch is closed
// (os.ErrClosed).
func (w *listenWatch) wait() error {
	_, err := w.reader.Read()
	if errors.Is(err, ringbuf.ErrClosed) {
		return os.ErrClosed
	}
	return err
}

// Close detaches the programs and wakes a wait.
func (w *listenWatch) Close() {
	if w.reader != nil {
		w.reader.Close()
	}
	for _, l := range w.links {
		l.Close()
	}
	if w.events != nil {
		w.events.Close()
	}
}
