package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/smpc-cluster/smpc/internal/partition"
)

// TestIPv6 checks the cluster's IPv6, with real servers and clients: every
// OSlet's address on the bridge and its name, a dual-stack server on OSlet
// 2 reached from the host's ::1 and its face address and from OSlet 1's ::1
// and smpc-cluster, a server bound to OSlet 2's ::1 alone reached as the
// cluster's localhost but not from a machine on the bridge, UDP through
// ::1, and nothing left after shutdown: the ip6 table, and the host's IPv6
// forwarding and accept_ra as they were.
func TestIPv6(t *testing.T) {
	needRoot(t)
	if v, err := os.ReadFile("/proc/sys/net/ipv6/conf/default/disable_ipv6"); err != nil || strings.TrimSpace(string(v)) != "0" {
		t.Skip("this kernel runs no IPv6 in new network namespaces")
	}
	if _, err := partition.Cgroup2Root(); err != nil {
		t.Skip("the host's ::1 reaches the OSlets through the connect-time redirect, which needs a cgroup v2 hierarchy")
	}
	forwardingWas := readSysctl(t, "net/ipv6/conf/all/forwarding")
	acceptRAWas := acceptRA(t)
	c := boot(t, "--subnet", "10.79.4.0/24", "--subnet6", "fd00:e2e:6::/64")
	nw := c.network()
	if nw.Gateway6 != "fd00:e2e:6::1" || nw.Addrs6[2] != "fd00:e2e:6::3" {
		t.Fatalf("IPv6 addresses: face %q, OSlets %v", nw.Gateway6, nw.Addrs6)
	}
	if forwardingWas != "1" {
		if got := readSysctl(t, "net/ipv6/conf/all/forwarding"); got != "1" {
			t.Errorf("IPv6 forwarding is %s with the cluster up", got)
		}
		// A host that takes its IPv6 route from router advertisements
		// keeps taking them while it forwards.
		for name, was := range acceptRAWas {
			if name == "all" {
				continue // read by no interface
			}
			if got := readSysctl(t, "net/ipv6/conf/"+name+"/accept_ra"); was == "1" && got != "2" {
				t.Errorf("accept_ra of %s is %s with the cluster up, want 2", name, got)
			}
		}
	}
	var st []struct {
		Address6 string `json:"address6"`
	}
	json.Unmarshal([]byte(c.must("status", "--json")), &st)
	if len(st) != 2 || st[1].Address6 != nw.Addrs6[2] {
		t.Errorf("status --json IPv6 addresses: %+v, want OSlet 2's %s", st, nw.Addrs6[2])
	}
	if out := c.must("run", "--on", "1", "--", "ip", "-6", "addr", "show", "eth0"); !strings.Contains(out, nw.Addrs6[1]+"/64") {
		t.Errorf("OSlet 1's eth0 lacks %s: %s", nw.Addrs6[1], out)
	}
	if out := c.must("run", "--on", "1", "--", "getent", "ahostsv6", "oslet-2"); !strings.Contains(out, nw.Addrs6[2]) {
		t.Errorf("oslet-2 in OSlet 1 does not resolve to %s: %s", nw.Addrs6[2], out)
	}

	t.Run("dual-stack server on oslet 2", func(t *testing.T) {
		const port = 18661
		pid := c.serveWho(2, "::", port, "oslet 2\n")
		defer c.smpc("kill", strconv.Itoa(pid))
		p := c.waitPort(t, "tcp", port, 2, forwarded)
		if !slices.Equal(p.Families, []string{"ipv4", "ipv6"}) {
			t.Errorf("port map families %v, want ipv4 and ipv6", p.Families)
		}
		if out := c.must("ports"); !strings.Contains(out, "4+6") {
			t.Errorf("smpc ports does not show both families:\n%s", out)
		}
		for _, url := range []string{fmt.Sprintf("http://[::1]:%d/who", port), fmt.Sprintf("http://[%s]:%d/who", nw.Gateway6, port)} {
			if body, err := tryGet(url); err != nil || body != "oslet 2\n" {
				t.Errorf("the host's %s: %q %v", url, body, err)
			}
		}
		// The host's connection to ::1 was redirected at connect: it
		// runs from the face's IPv6 address, and its peer reads ::1.
		conn, err := net.Dial("tcp", fmt.Sprintf("[::1]:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		local, remote := conn.LocalAddr().(*net.TCPAddr), conn.RemoteAddr().String()
		conn.Close()
		if local.IP.String() != nw.Gateway6 || remote != fmt.Sprintf("[::1]:%d", port) {
			t.Errorf("the host's connection to ::1: from %s to %s, want from %s to [::1]:%d", local, remote, nw.Gateway6, port)
		}
		peer := c.must("run", "--on", "1", "--", "python3", "-c", fmt.Sprintf(
			"import socket; s = socket.create_connection(('::1', %d)); print(s.getpeername()[0], s.getsockname()[0])", port))
		if want := "::1 " + nw.Addrs6[1]; strings.TrimSpace(peer) != want {
			t.Errorf("OSlet 1's connection to ::1: peer, own = %q, want %q", strings.TrimSpace(peer), want)
		}
		for _, url := range []string{fmt.Sprintf("http://[::1]:%d/who", port), fmt.Sprintf("http://smpc-cluster:%d/who", port)} {
			if out, _ := c.smpc("run", "--on", "1", "--", "curl", "-6", "-sS", "-m", "3", url); out != "oslet 2\n" {
				t.Errorf("OSlet 1's %s: %q", url, out)
			}
		}
		// A machine on the bridge reaches the face's port (dnat-in).
		outside := c.machineOnBridge(t, "10.79.4.200/24", "fd00:e2e:6::c8/64")
		url := fmt.Sprintf("http://[%s]:%d/who", nw.Gateway6, port)
		if out, err := outside("curl", "-sS", "-m", "3", url); err != nil || out != "oslet 2\n" {
			t.Errorf("a machine on the bridge at %s: %q %v", url, out, err)
		}
	})

	t.Run("server bound to oslet 2's ::1", func(t *testing.T) {
		const port = 18662
		pid := c.serveWho(2, "::1", port, "oslet 2's ::1\n")
		defer c.smpc("kill", strconv.Itoa(pid))
		p := c.waitPort(t, "tcp", port, 2, func(p portEntry) bool { return p.Forwarded && p.Scope == "loopback" })
		if !slices.Equal(p.Families, []string{"ipv6"}) {
			t.Errorf("port map families %v, want ipv6", p.Families)
		}
		if body, err := tryGet(fmt.Sprintf("http://[::1]:%d/who", port)); err != nil || body != "oslet 2's ::1\n" {
			t.Errorf("the host's [::1]:%d: %q %v", port, body, err)
		}
		// Bound to ::1 alone, it does not answer 127.0.0.1, as on one machine.
		if _, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 3*time.Second); err == nil {
			t.Errorf("the host's 127.0.0.1:%d reached a server bound to ::1 alone", port)
		}
		if out, _ := c.smpc("run", "--on", "1", "--", "curl", "-sS", "-m", "3", fmt.Sprintf("http://localhost:%d/who", port)); out != "oslet 2's ::1\n" {
			t.Errorf("OSlet 1's localhost:%d reached %q", port, out)
		}
		outside := c.machineOnBridge(t, "10.79.4.201/24", "fd00:e2e:6::c9/64")
		for _, url := range []string{fmt.Sprintf("http://[%s]:%d/who", nw.Addrs6[2], port), fmt.Sprintf("http://[%s]:%d/who", nw.Gateway6, port)} {
			if out, err := outside("curl", "-sS", "-m", "3", url); err == nil {
				t.Errorf("a machine on the bridge reached the ::1 server at %s: %q", url, out)
			}
		}
	})

	t.Run("udp through ::1", func(t *testing.T) {
		const port = 18663
		pid := c.pidOf(c.must("run", "--on", "2", "--detach", "--", "python3", "-c", fmt.Sprintf(
			"import socket\ns = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\ns.bind(('::', %d))\n"+
				"while True:\n    d, a = s.recvfrom(100); s.sendto(b'oslet 2', a)", port)))
		defer c.smpc("kill", strconv.Itoa(pid))
		c.waitPort(t, "udp", port, 2, forwarded)
		ask := fmt.Sprintf("import socket\ns = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(1)\n"+
			"s.sendto(b'who', ('::1', %d))\ntry:\n    d, a = s.recvfrom(100); print(d.decode(), a[0], a[1])\nexcept OSError:\n    print('none')", port)
		want := fmt.Sprintf("oslet 2 ::1 %d", port)
		if out, _ := exec.Command("python3", "-c", ask).CombinedOutput(); strings.TrimSpace(string(out)) != want {
			t.Errorf("the host's datagram to [::1]:%d: answer, from = %q, want %q", port, strings.TrimSpace(string(out)), want)
		}
		if out, _ := c.smpc("run", "--on", "1", "--", "python3", "-c", ask); strings.TrimSpace(out) != want {
			t.Errorf("OSlet 1's datagram to [::1]:%d: answer, from = %q, want %q", port, strings.TrimSpace(out), want)
		}
	})

	c.must("shutdown")
	for _, name := range nftTables(t) {
		if strings.HasPrefix(name, "smpc") {
			t.Errorf("nftables table %s left after shutdown", name)
		}
	}
	if got := readSysctl(t, "net/ipv6/conf/all/forwarding"); got != forwardingWas {
		t.Errorf("IPv6 forwarding is %s after shutdown, was %s", got, forwardingWas)
	}
	for name, was := range acceptRAWas {
		if got, err := os.ReadFile("/proc/sys/net/ipv6/conf/" + name + "/accept_ra"); err == nil && strings.TrimSpace(string(got)) != was {
			t.Errorf("accept_ra of %s is %s after shutdown, was %s", name, strings.TrimSpace(string(got)), was)
		}
	}
}

// acceptRA reads accept_ra of every IPv6 interface of the host.
func acceptRA(t *testing.T) map[string]string {
	confs, err := filepath.Glob("/proc/sys/net/ipv6/conf/*/accept_ra")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, path := range confs {
		name := filepath.Base(filepath.Dir(path))
		got[name] = readSysctl(t, "net/ipv6/conf/"+name+"/accept_ra")
	}
	return got
}

// machineOnBridge joins a network namespace to the cluster's bridge with
// the addresses given, standing in for another machine on the cluster's
// network; it returns a function that runs a command there. The test's end
// removes it.
func (c *cluster) machineOnBridge(t *testing.T, addr4, addr6 string) func(args ...string) (string, error) {
	t.Helper()
	nw := c.network()
	// Named after the address's last byte, which the callers keep apart.
	ip4 := netip.MustParsePrefix(addr4).Addr().As4()
	ns := fmt.Sprintf("smpc-e2e-m%d", ip4[3])
	outer, inner := fmt.Sprintf("smpce2eo%d", ip4[3]), fmt.Sprintf("smpce2ei%d", ip4[3])
	ip := func(args ...string) {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	exec.Command("ip", "netns", "del", ns).Run()
	exec.Command("ip", "link", "del", outer).Run()
	ip("netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	ip("link", "add", outer, "type", "veth", "peer", "name", inner)
	t.Cleanup(func() { exec.Command("ip", "link", "del", outer).Run() })
	ip("link", "set", inner, "netns", ns)
	ip("link", "set", outer, "master", nw.Bridge, "up")
	ip("-n", ns, "addr", "add", addr4, "dev", inner)
	ip("-n", ns, "-6", "addr", "add", addr6, "dev", inner, "nodad")
	ip("-n", ns, "link", "set", inner, "up")
	ip("-n", ns, "link", "set", "lo", "up")
	return func(args ...string) (string, error) {
		out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
		return string(out), err
	}
}

// TestNoIPv6 boots a cluster with --subnet6 none: its OSlets have no IPv6
// address and no name resolves to one, it makes no ip6 table and hangs no
// IPv6 program, leaves the host's IPv6 forwarding as it was, and its IPv4
// works as ever.
func TestNoIPv6(t *testing.T) {
	needRoot(t)
	forwardingWas := readSysctl(t, "net/ipv6/conf/all/forwarding")
	c := boot(t, "--subnet", "10.79.5.0/24", "--subnet6", "none")
	if nw := c.network(); nw.Gateway6 != "" || len(nw.Addrs6) != 0 {
		t.Errorf("a cluster without IPv6 has IPv6 addresses: %q %v", nw.Gateway6, nw.Addrs6)
	}
	if got := readSysctl(t, "net/ipv6/conf/all/forwarding"); got != forwardingWas {
		t.Errorf("IPv6 forwarding is %s with a cluster without IPv6, was %s", got, forwardingWas)
	}
	if out := c.must("run", "--on", "1", "--", "ip", "-6", "addr", "show", "scope", "global"); strings.TrimSpace(out) != "" {
		t.Errorf("OSlet 1 has a global IPv6 address: %s", out)
	}
	if out, code := c.smpc("run", "--on", "1", "--", "getent", "ahostsv6", "smpc-cluster"); code == 0 && !strings.Contains(out, "::ffff:") {
		t.Errorf("smpc-cluster resolves to IPv6 in a cluster without it: %s", out)
	}
	if out := c.must("status", "--json"); strings.Contains(out, "address6") {
		t.Errorf("status shows an IPv6 address: %s", out)
	}
	conn, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyIPv6)
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		if strings.HasPrefix(tb.Name, "smpc") {
			t.Errorf("a cluster without IPv6 made table ip6 %s", tb.Name)
		}
	}
	if _, err := partition.Cgroup2Root(); err == nil {
		for _, p := range redirectPrograms(t) {
			if strings.HasSuffix(p, "6") {
				t.Errorf("a cluster without IPv6 hung %s", p)
			}
		}
	}
	const port = 18664
	pid := c.serveWho(2, "0.0.0.0", port, "oslet 2\n")
	defer c.smpc("kill", strconv.Itoa(pid))
	c.waitPort(t, "tcp", port, 2, forwarded)
	if body, err := tryGet(fmt.Sprintf("http://127.0.0.1:%d/who", port)); err != nil || body != "oslet 2\n" {
		t.Errorf("the host's 127.0.0.1:%d: %q %v", port, body, err)
	}
}
