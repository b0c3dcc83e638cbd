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
		r, err := Plan("/run/smpc", tt.subnet, tt.oslets)
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
	a, _ := Plan("/run/a", "", []int{1})
	b, _ := Plan("/run/b", "", []int{1})
	if a.Bridge == b.Bridge {
		t.Error("two state dirs share a bridge name")
	}
}

func TestHostsFile(t *testing.T) {
	r, _ := Plan("/run/smpc", "", []int{1, 2})
	got := string(HostsFile(r, []byte("127.0.0.1 localhost")))
	for _, want := range []string{"127.0.0.1 localhost\n", "10.77.0.1\tsmpc-cluster\n", "10.77.0.3\toslet-2\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("hosts file lacks %q:\n%s", want, got)
		}
	}
}

func TestReachable(t *testing.T) {
	own := netip.MustParseAddr("10.77.0.3")
	for _, tt := range []struct {
		addr string
		want bool
	}{
		{"0.0.0.0", true}, {"::", true}, {"10.77.0.3", true}, {"::ffff:10.77.0.3", true},
		{"127.0.0.1", false}, {"::1", false}, {"10.77.0.2", false},
	} {
		if got := reachable(netip.MustParseAddr(tt.addr), own); got != tt.want {
			t.Errorf("reachable(%s) = %v, want %v", tt.addr, got, tt.want)
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
	for i, insns := range []asm.Instructions{connect, peername, connect, peername} {
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
