package network

import (
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

func TestPlan(t *testing.T) {
	tests := []struct {
		subnet  string
		oslets  []int
		gateway string
		addrs   map[int]string
		err     string
	}{
		{"", []int{1, 2}, "10.77.0.1", map[int]string{1: "10.77.0.2", 2: "10.77.0.3"}, ""},
		{"192.168.50.7/24", []int{1, 3}, "192.168.50.1", map[int]string{1: "192.168.50.2", 3: "192.168.50.4"}, ""},
		{"10.0.0.0/29", []int{1, 2, 3, 4, 5}, "10.0.0.1", map[int]string{5: "10.0.0.6"}, ""},
		{"10.0.0.0/29", []int{1, 2, 3, 4, 5, 6}, "", nil, "too small"},
		{"fd00::/64", []int{1}, "", nil, "not an IPv4 prefix"},
		{"nonsense", []int{1}, "", nil, "not an IPv4 prefix"},
	}
	for _, tt := range tests {
		r, err := Plan("/run/smpc", tt.subnet, NoIPv6, tt.oslets)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("Plan(%q) = %v, want error %q", tt.subnet, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("Plan(%q): %v", tt.subnet, err)
		}
		if r.Gateway != tt.gateway {
			t.Errorf("Plan(%q) gateway %s, want %s", tt.subnet, r.Gateway, tt.gateway)
		}
		for k, a := range tt.addrs {
			if r.Addr(k) != a {
				t.Errorf("Plan(%q) oslet %d: %s, want %s", tt.subnet, k, r.Addr(k), a)
			}
		}
		for _, name := range append(sortedValues(r.Veths), r.Bridge) {
			if len(name) > 15 {
				t.Errorf("interface name %q is longer than the kernel allows", name)
			}
		}
	}
	a, _ := Plan("/run/a", "", "", []int{1})
	b, _ := Plan("/run/b", "", "", []int{1})
	if a.Bridge == b.Bridge {
		t.Error("two state dirs share a bridge name")
	}
	if a.Subnet6 == b.Subnet6 {
		t.Error("two state dirs share an IPv6 subnet")
	}
}

func TestPlanIPv6(t *testing.T) {
	tests := []struct {
		subnet6 string
		oslets  []int
		gateway string
		addrs   map[int]string
		err     string
	}{
		{"fd12:3456:789a::/64", []int{1, 2}, "fd12:3456:789a::1", map[int]string{1: "fd12:3456:789a::2", 2: "fd12:3456:789a::3"}, ""},
		{"fd12:3456:789a:1::/64", []int{3}, "fd12:3456:789a:1::1", map[int]string{3: "fd12:3456:789a:1::4"}, ""},
		{"fd00:1::/125", []int{1, 2, 3, 4, 5}, "fd00:1::1", map[int]string{5: "fd00:1::6"}, ""},
		{"fd00:1::/125", []int{1, 2, 3, 4, 5, 6}, "", nil, "too small"},
		{"2001:db8::/64", []int{1}, "", nil, "unique local"},
		{"10.0.0.0/24", []int{1}, "", nil, "not an IPv6 prefix"},
		{"nonsense", []int{1}, "", nil, "not an IPv6 prefix"},
	}
	for _, tt := range tests {
		r, err := Plan("/run/smpc", "", tt.subnet6, tt.oslets)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("Plan(subnet6 %q) = %v, want error %q", tt.subnet6, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("Plan(subnet6 %q): %v", tt.subnet6, err)
		}
		if r.Gateway6 != tt.gateway {
			t.Errorf("Plan(subnet6 %q) gateway %s, want %s", tt.subnet6, r.Gateway6, tt.gateway)
		}
		for k, a := range tt.addrs {
			if r.Addr6(k) != a {
				t.Errorf("Plan(subnet6 %q) oslet %d: %s, want %s", tt.subnet6, k, r.Addr6(k), a)
			}
		}
	}
	r, err := Plan("/run/smpc", "", "", []int{1})
	if err != nil {
		t.Fatal(err)
	}
	p := netip.MustParsePrefix(r.Subnet6)
	if !netip.MustParsePrefix("fd00::/8").Contains(p.Addr()) || p.Bits() != 64 {
		t.Errorf("default IPv6 subnet %s, want a /64 in fd00::/8", p)
	}
	if r, _ := Plan("/run/smpc", "", NoIPv6, []int{1}); r.HasIPv6() || r.Addr6(1) != "" {
		t.Errorf("a cluster without IPv6 has %q", r.Subnet6)
	}
}

func TestHostsFile(t *testing.T) {
	r, _ := Plan("/run/smpc", "", "fd12:3456:789a::/64", []int{1, 2})
	got := string(HostsFile(r, []byte("127.0.0.1 localhost")))
	for _, want := range []string{"127.0.0.1 localhost\n", "10.77.0.1\tsmpc-cluster\n", "10.77.0.3\toslet-2\n", "fd12:3456:789a::1\tsmpc-cluster\n", "fd12:3456:789a::3\toslet-2\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("hosts file lacks %q:\n%s", want, got)
		}
	}
}

func TestReachable(t *testing.T) {
	own, own6 := netip.MustParseAddr("10.77.0.3"), netip.MustParseAddr("fd00:77::3")
	for _, tt := range []struct {
		addr   string
		v6only bool
		want   bool // with IPv6
		want4  bool // in a cluster without it
		fams   uint8
	}{
		{"0.0.0.0", false, true, true, familyBit4},
		{"::", false, true, true, familyBit4 | familyBit6},
		{"::", true, true, false, familyBit6},
		{"10.77.0.3", false, true, true, familyBit4},
		{"::ffff:10.77.0.3", false, true, true, familyBit4},
		{"fd00:77::3", true, true, false, familyBit6},
		{"fd00:77::2", false, false, false, familyBit6},
		{"127.0.0.1", false, false, false, familyBit4},
		{"::1", false, false, false, familyBit6},
		{"10.77.0.2", false, false, false, familyBit4},
	} {
		l := listener{addr: netip.MustParseAddr(tt.addr), v6only: tt.v6only}
		if got := l.reachable(own, own6); got != tt.want {
			t.Errorf("%s (v6only %v): reachable = %v, want %v", tt.addr, tt.v6only, got, tt.want)
		}
		if got := l.reachable(own, netip.Addr{}); got != tt.want4 {
			t.Errorf("%s (v6only %v): reachable without IPv6 = %v, want %v", tt.addr, tt.v6only, got, tt.want4)
		}
		if got := l.families(); got != tt.fams {
			t.Errorf("%s (v6only %v): families %b, want %b", tt.addr, tt.v6only, got, tt.fams)
		}
	}
}

// TestListeners asks this process's own network stack for its listeners:
// the kernel's socket diagnostics need no privilege for that.
func TestListeners(t *testing.T) {
	tcp, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	udp, err := net.ListenPacket("udp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	// A connected socket is no listener.
	conn, err := net.Dial("tcp4", tcp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ls, err := listeners(0)
	if err != nil {
		if os.IsPermission(err) {
			t.Skipf("sock_diag refused: %v", err)
		}
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, l := range ls {
		found[l.proto+":"+itoa(l.port)] = true
		if l.proto == "tcp" && int(l.port) == conn.LocalAddr().(*net.TCPAddr).Port {
			t.Errorf("the connection's own port is reported as a listener")
		}
	}
	for _, want := range []string{"tcp:" + itoa(uint16(tcp.Addr().(*net.TCPAddr).Port)), "udp:" + itoa(uint16(udp.LocalAddr().(*net.UDPAddr).Port))} {
		if !found[want] {
			t.Errorf("listeners lack %s: %v", want, ls)
		}
	}
}

func itoa(p uint16) string { return strconv.Itoa(int(p)) }

func TestRedirectProgramsLoad(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("loading BPF programs needs root")
	}
	r, err := newRedirectMaps()
	if err != nil {
		t.Skipf("this kernel makes no BPF maps: %v", err)
	}
	defer r.Close()
	connect, peername := r.connectProgram(1, netip.MustParseAddr("192.168.77.129")), peernameProgram(r.peers, netip.MustParsePrefix("192.168.77.128/25"))
	connect6, peername6 := r.connect6Program(1, netip.MustParseAddr("fd12:3456:789a::1")), peername6Program(r.peers6, netip.MustParsePrefix("fd12:3456:789a::/64"))
	for i, insns := range []asm.Instructions{connect, peername, connect, peername, connect6, peername6, connect6, peername6} {
		// The verifier's word on each program where it hangs, without
		// attaching it.
		attach := RedirectAttachTypes[i]
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.CGroupSockAddr, AttachType: attach, Instructions: insns, License: "GPL"})
		if err != nil {
			t.Errorf("%s program: %v", attach, err)
			continue
		}
		prog.Close()
	}
}
