package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/smpc-cluster/smpc/internal/network"
	"github.com/smpc-cluster/smpc/internal/partition"
	"github.com/smpc-cluster/smpc/internal/statedir"
)

// TestNetHelper is a server run inside an OSlet by TestNetwork: with
// SMPC_E2E_HELPER=http it serves HTTP on SMPC_PORT with Go's net/http, with
// udp it echoes UDP datagrams; either runs until killed.
func TestNetHelper(t *testing.T) {
	port := os.Getenv("SMPC_PORT")
	switch os.Getenv("SMPC_E2E_HELPER") {
	case "http":
		host, _ := os.Hostname()
		http.ListenAndServe(":"+port, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "net/http on %s\n", host)
		}))
	case "udp":
		c, err := net.ListenPacket("udp", ":"+port)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1500)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			c.WriteTo(buf[:n], from)
		}
	default:
		t.Skip("helper process for TestNetwork")
	}
}

type portEntry struct {
	Proto       string   `json:"proto"`
	Port        int      `json:"port"`
	OSlet       int      `json:"oslet"`
	PID         int      `json:"pid"`
	Command     string   `json:"command"`
	Holder      int      `json:"holder"`
	Forwarded   bool     `json:"forwarded"`
	HostClients bool     `json:"host_clients"`
	Scope       string   `json:"scope"`
	Families    []string `json:"families"`
}

func (c *cluster) ports() []portEntry {
	c.t.Helper()
	var ps []portEntry
	if err := json.Unmarshal([]byte(c.must("ports", "--json")), &ps); err != nil {
		c.t.Fatal(err)
	}
	return ps
}

// waitPort waits until the port map has an entry for proto/port on OSlet k
// that matches want (nil: until it has none for the port at all), within the
// second the forwarder promises.
// waitPort waits for the port map's entry of port on OSlet k to satisfy
// want (nil: for the port to leave the map). The forwarder scans every
// 200 ms; the deadline leaves a loaded machine the time to start a server.
func (c *cluster) waitPort(t *testing.T, proto string, port, k int, want func(portEntry) bool) portEntry {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second * patience)
	for {
		var got *portEntry
		any := false
		for _, p := range c.ports() {
			if p.Proto == proto && p.Port == port {
				any = true
				if p.OSlet == k {
					got = &p
				}
			}
		}
		if want == nil && !any {
			return portEntry{}
		}
		if want != nil && got != nil && want(*got) {
			return *got
		}
		if time.Now().After(deadline) {
			t.Fatalf("port map after 5s: %s", c.must("ports"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func forwarded(p portEntry) bool { return p.Forwarded }

func httpGet(t *testing.T, url string) string {
	t.Helper()
	body, err := tryGet(url)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// tryGet fetches url with a client that does not keep connections: each
// GET is a new connection, which the forwards of the moment decide.
func tryGet(url string) (string, error) {
	cl := http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	r, err := cl.Get(url)
	if err != nil {
		return "", fmt.Errorf("GET %s: %w", url, err)
	}
	defer r.Body.Close()
	b, err := io.ReadAll(r.Body)
	if err != nil {
		return "", fmt.Errorf("GET %s: %w", url, err)
	}
	return string(b), nil
}

// smpcLinks lists the host's interfaces whose names smpc would make.
func smpcLinks(t *testing.T) []string {
	links, err := netlink.LinkList()
	for try := 0; errors.Is(err, netlink.ErrDumpInterrupted) && try < 10; try++ {
		links, err = netlink.LinkList() // another cluster's links changed meanwhile
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, "smpc") && !strings.HasPrefix(l.Attrs().Name, "smpce2e") {
			names = append(names, l.Attrs().Name)
		}
	}
	return names
}

func nftTables(t *testing.T) []string {
	conn, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	ts, err := conn.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tb := range ts {
		names = append(names, tb.Name)
	}
	return names
}

// redirectPrograms lists smpc's loopback redirect programs attached to the
// root of the cgroup v2 hierarchy.
func redirectPrograms(t *testing.T) []string {
	return rootPrograms(t, network.RedirectPrograms[:], network.RedirectAttachTypes[:])
}

// watchPrograms lists the listen watch's programs attached there.
func watchPrograms(t *testing.T) []string {
	return rootPrograms(t, network.WatchPrograms[:], network.WatchAttachTypes[:])
}

// rootPrograms lists the programs named names attached to the root of the
// cgroup v2 hierarchy at the attach points given.
func rootPrograms(t *testing.T, names []string, attaches []ebpf.AttachType) []string {
	root, err := partition.Cgroup2Root()
	if err != nil {
		t.Log(err)
		return nil
	}
	dir, err := os.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	var found []string
	for _, attach := range attaches {
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(dir.Fd()), Attach: attach})
		if err != nil {
			continue // an attach point this kernel lacks
		}
		for _, p := range res.Programs {
			prog, err := ebpf.NewProgramFromID(p.ID)
			if err != nil {
				continue
			}
			if info, err := prog.Info(); err == nil && slices.Contains(names, info.Name) {
				found = append(found, info.Name)
			}
			prog.Close()
		}
	}
	return found
}

// TestListenersFoundByEvents: the forwarder of an idle cluster does not
// scan the OSlets' stacks; the listen watch wakes it, so that a new server
// is forwarded, and a stopped one forgotten, at once.
func TestListenersFoundByEvents(t *testing.T) {
	c := boot(t, "--subnet", "10.79.2.0/24")
	// The forwarder attaches the watch once the cluster is up: give it
	// the time a slow (emulated) machine takes.
	var progs []string
	deadline := time.Now().Add(2 * time.Second * patience)
	for progs = watchPrograms(t); len(progs) < 3 && time.Now().Before(deadline); progs = watchPrograms(t) {
		time.Sleep(100 * time.Millisecond)
	}
	if len(progs) < 3 {
		t.Skipf("no listen watch on this kernel (programs attached: %v): the forwarder scans every second instead", progs)
	}
	// The forwarder backs off while nothing changes: its next scan of its
	// own is seconds away now.
	time.Sleep(4 * time.Second)
	const port = 18600
	start := time.Now()
	out := c.must("run", "--detach", "--on", "2", "--", "python3", "-m", "http.server", strconv.Itoa(port))
	c.waitPort(t, "tcp", port, 2, forwarded)
	if d := time.Since(start); d > time.Second*patience {
		t.Errorf("a new server was forwarded %v after it started, want it at once", d)
	}
	start = time.Now()
	c.must("kill", strings.TrimSpace(out))
	c.waitPort(t, "tcp", port, 2, nil)
	if d := time.Since(start); d > time.Second*patience {
		t.Errorf("a stopped server left the port map %v after it stopped, want at once", d)
	}
	c.must("shutdown")
	if progs := watchPrograms(t); len(progs) != 0 {
		t.Errorf("listen watch programs left after shutdown: %v", progs)
	}
}

func readSysctl(t *testing.T, name string) string {
	b, err := os.ReadFile("/proc/sys/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestNetwork checks the cluster's one face: OSlet addresses, smpc-cluster,
// servers on OSlets reached at the host's loopback and from other OSlets
// through kernel forwards that follow the listeners, port conflicts, an
// interface moved into an OSlet and back, and nothing left at shutdown but
// what smpc did not make.
func TestNetwork(t *testing.T) {
	needRoot(t)
	for _, tool := range []string{"python3", "curl", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("this test runs real servers and clients; %s is missing (.ci/run installs it)", tool)
		}
	}
	// A table and an interface that are not smpc's: they must survive.
	conn, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	foreign := conn.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: "e2e-foreign"})
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
	defer func() { conn.DelTable(foreign); conn.Flush() }()
	// A veth pair stands for a NIC: a virtual interface dies with the
	// namespace it is in, so it comes back only if smpc moves it back.
	dummy := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "smpce2e0"}, PeerName: "smpce2e1"}
	netlink.LinkDel(dummy)
	if err := netlink.LinkAdd(dummy); err != nil {
		t.Fatal(err)
	}
	defer netlink.LinkDel(dummy)
	forwardWas := readSysctl(t, "net/ipv4/ip_forward")
	linksBefore := smpcLinks(t)

	c := boot(t, "--device", "2=smpce2e0")
	var st []struct {
		Index   int    `json:"index"`
		Address string `json:"address"`
	}
	json.Unmarshal([]byte(c.must("status", "--json")), &st)
	if len(st) != 2 || st[0].Address != "10.77.0.2" || st[1].Address != "10.77.0.3" {
		t.Fatalf("status addresses: %+v", st)
	}
	if out := c.must("status"); !strings.Contains(out, "ADDRESS") || !strings.Contains(out, "10.77.0.3") {
		t.Errorf("status does not show addresses:\n%s", out)
	}

	t.Run("interface moved into its oslet", func(t *testing.T) {
		if _, err := netlink.LinkByName("smpce2e0"); err == nil {
			t.Error("smpce2e0 is still on the host")
		}
		out := c.must("run", "--on", "2", "--", "ip", "-br", "link", "show", "smpce2e0")
		if !strings.Contains(out, "smpce2e0") {
			t.Errorf("oslet 2 does not have smpce2e0: %s", out)
		}
	})

	t.Run("oslets reach each other by address and name", func(t *testing.T) {
		out := c.must("run", "--on", "1", "--", "getent", "ahostsv4", "smpc-cluster")
		out += c.must("run", "--on", "1", "--", "getent", "ahostsv4", "oslet-2")
		if !strings.Contains(out, "10.77.0.1") || !strings.Contains(out, "10.77.0.3") {
			t.Fatalf("names in oslet 1: %s", out)
		}
		// Traffic between the host and its OSlets never leaves the machine:
		// their links carry frames as large as the loopback's.
		if out := c.must("run", "--on", "1", "--", "ip", "link", "show", "eth0"); !strings.Contains(out, "mtu 65535") {
			t.Errorf("eth0 in oslet 1: %s", out)
		}
	})

	helper := testBinary(t)
	startHelper := func(k int, kind string, port int) int {
		out := c.must("run", "--on", strconv.Itoa(k), "--detach", "--", "/usr/bin/env", "SMPC_E2E_HELPER="+kind,
			"SMPC_PORT="+strconv.Itoa(port), helper, "-test.run=^TestNetHelper$")
		pid, err := strconv.Atoi(strings.TrimSpace(out))
		if err != nil {
			t.Fatalf("run --detach: %q", out)
		}
		return pid
	}

	t.Run("net/http on oslet 2", func(t *testing.T) {
		const port = 18081
		pid := startHelper(2, "http", port)
		p := c.waitPort(t, "tcp", port, 2, forwarded)
		if p.PID != pid || p.Command != "e2e.test" {
			t.Errorf("port map names pid %d %q, want %d e2e.test", p.PID, p.Command, pid)
		}
		if body := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/", port)); !strings.Contains(body, "net/http on") {
			t.Errorf("host loopback: %q", body)
		}
		// The connection was redirected at connect: its source is the
		// host's bridge address, and its peer still reads 127.0.0.1:P.
		conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		local, remote := conn.LocalAddr().(*net.TCPAddr), conn.RemoteAddr().String()
		conn.Close()
		if _, err := partition.Cgroup2Root(); err != nil {
			t.Logf("no cgroup v2 here, so no loopback redirect: %v", err)
		} else if progs := redirectPrograms(t); len(progs) != len(network.RedirectPrograms) {
			t.Errorf("loopback redirect programs attached: %v", progs)
		} else if local.IP.IsLoopback() || remote != fmt.Sprintf("127.0.0.1:%d", port) {
			t.Errorf("connection to the loopback: from %s to %s, want from the bridge to 127.0.0.1:%d", local, remote, port)
		}
		// OSlet 1, which serves no P, reaches OSlet 2's server through its
		// own loopback too (TestLocalhostAcrossOSlets).
		if _, err := partition.Cgroup2Root(); err == nil {
			if out, code := c.smpc("run", "--on", "1", "--", "curl", "-sS", "-m", "3", fmt.Sprintf("http://127.0.0.1:%d/", port)); code != 0 {
				t.Errorf("oslet 1's loopback did not reach oslet 2's server: %d %q", code, out)
			}
		}
		// A client bound to the loopback takes the NAT path instead.
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}, Timeout: 3 * time.Second}
		if conn, err := d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err != nil {
			t.Errorf("bound to 127.0.0.1: %v", err)
		} else {
			conn.SetDeadline(time.Now().Add(3 * time.Second))
			io.WriteString(conn, "GET / HTTP/1.0\r\n\r\n")
			if body, _ := io.ReadAll(conn); !strings.Contains(string(body), "net/http on") {
				t.Errorf("bound to 127.0.0.1: %q", body)
			}
			conn.Close()
		}
		out := c.must("run", "--on", "1", "--", "curl", "-sS", "-m", "3", fmt.Sprintf("http://smpc-cluster:%d/", port))
		if !strings.Contains(out, "net/http on") {
			t.Errorf("from oslet 1 through smpc-cluster: %q", out)
		}
		// The server exits: its forward goes within a second, and the port
		// is closed on the host again.
		c.must("kill", strconv.Itoa(pid))
		c.waitPort(t, "tcp", port, 2, nil)
		if _, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
			t.Error("the port still answers after its server exited")
		}
	})

	t.Run("python http.server on oslet 2, conflict on oslet 1", func(t *testing.T) {
		const port = 18082
		out := c.must("run", "--on", "2", "--detach", "--", "python3", "-m", "http.server", "--bind", "0.0.0.0", "--directory", "/etc", strconv.Itoa(port))
		first := c.pidOf(out)
		c.waitPort(t, "tcp", port, 2, forwarded)
		if body := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/hostname", port)); strings.TrimSpace(body) == "" {
			t.Errorf("host loopback: empty body")
		}
		out = c.must("run", "--on", "1", "--", "curl", "-sS", "-m", "3", fmt.Sprintf("http://smpc-cluster:%d/hosts", port))
		if !strings.Contains(out, "smpc-cluster") {
			t.Errorf("from oslet 1: %q", out)
		}
		out = c.must("run", "--on", "1", "--detach", "--", "python3", "-m", "http.server", "--bind", "0.0.0.0", strconv.Itoa(port))
		second := c.pidOf(out)
		p := c.waitPort(t, "tcp", port, 1, func(p portEntry) bool { return p.Holder == 2 && !p.Forwarded })
		if p.PID != second {
			t.Errorf("conflict names pid %d, want %d", p.PID, second)
		}
		if out := c.must("ports"); !strings.Contains(out, "conflict: held by oslet 2") {
			t.Errorf("smpc ports does not show the conflict:\n%s", out)
		}
		// The holder leaves: the port goes to the one still listening.
		c.must("kill", strconv.Itoa(first))
		c.waitPort(t, "tcp", port, 1, forwarded)
		c.must("kill", strconv.Itoa(second))
		c.waitPort(t, "tcp", port, 1, nil)
	})

	t.Run("udp echo on oslet 1", func(t *testing.T) {
		const port = 18083
		pid := startHelper(1, "udp", port)
		c.waitPort(t, "udp", port, 1, forwarded)
		conn, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(3 * time.Second))
		conn.Write([]byte("ping"))
		buf := make([]byte, 16)
		n, err := conn.Read(buf)
		if err != nil || string(buf[:n]) != "ping" {
			t.Fatalf("echo: %q %v", buf[:n], err)
		}
		c.must("kill", strconv.Itoa(pid))
		c.waitPort(t, "udp", port, 1, nil)
	})

	t.Run("a port the host serves stays the host's", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:18084")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "host") }))
		pid := startHelper(2, "http", 18084)
		c.waitPort(t, "tcp", 18084, 2, func(p portEntry) bool { return p.Holder == 0 })
		if body := httpGet(t, "http://127.0.0.1:18084/"); body != "host" {
			t.Errorf("the host's own server lost its port: %q", body)
		}
		c.must("kill", strconv.Itoa(pid))
	})

	c.must("shutdown")
	if progs := append(redirectPrograms(t), watchPrograms(t)...); len(progs) != 0 {
		t.Errorf("BPF programs left after shutdown: %v", progs)
	}
	if links := smpcLinks(t); len(links) != len(linksBefore) {
		t.Errorf("links left after shutdown: %v (before boot: %v)", links, linksBefore)
	}
	tables := nftTables(t)
	for _, name := range tables {
		if strings.HasPrefix(name, "smpc") {
			t.Errorf("nftables table %s left after shutdown", name)
		}
	}
	if !strings.Contains(strings.Join(tables, " "), "e2e-foreign") {
		t.Error("shutdown removed a table smpc did not make")
	}
	if _, err := netlink.LinkByName("smpce2e0"); err != nil {
		t.Errorf("smpce2e0 did not come back to the host: %v", err)
	}
	if got := readSysctl(t, "net/ipv4/ip_forward"); got != forwardWas {
		t.Errorf("ip_forward is %s after shutdown, was %s", got, forwardWas)
	}
}

// TestNetworkAfterCrash kills the boot process and every init with SIGKILL,
// as a crash would, and checks that the next boot on the same state dir
// removes the bridge, veths and table the dead cluster left, and that its
// own shutdown leaves nothing.
func TestNetworkAfterCrash(t *testing.T) {
	forwardingWas := map[string]string{}
	for _, name := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"} {
		forwardingWas[name] = readSysctl(t, name)
	}
	c := boot(t)
	b, err := os.ReadFile(c.dir + "/cluster.json")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Supervisor int         `json:"supervisor"`
		Reaper     int         `json:"reaper"`
		Inits      map[int]int `json:"inits"`
	}
	json.Unmarshal(b, &st)
	syscall.Kill(st.Supervisor, syscall.SIGKILL)
	for _, pid := range st.Inits {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	waitFor(t, "the boot process and the inits to die", func() bool {
		for _, pid := range append([]int{st.Supervisor}, slices.Collect(maps.Values(st.Inits))...) {
			if syscall.Kill(pid, 0) == nil && !isZombie(pid) {
				return false
			}
		}
		return true
	})
	if len(smpcLinks(t)) == 0 {
		t.Fatal("the crashed cluster left no bridge: the test does not test anything")
	}
	// The kernel detaches the BPF programs with their links, once the
	// dead process's descriptors are released.
	var progs []string
	deadline := time.Now().Add(5 * time.Second)
	smpcPrograms := func() []string { return append(redirectPrograms(t), watchPrograms(t)...) }
	for progs = smpcPrograms(); len(progs) != 0 && time.Now().Before(deadline); progs = smpcPrograms() {
		time.Sleep(20 * time.Millisecond)
	}
	if len(progs) != 0 {
		t.Errorf("BPF programs left by the crashed boot process: %v", progs)
	}
	if syscall.Kill(st.Reaper, 0) != nil {
		t.Fatal("the crashed cluster's PID 1 is gone already: the test does not test its clean-up")
	}
	c.must("boot", "--detach")
	// The next boot ends what the crash left, the cluster's PID 1 too.
	waitFor(t, "the crashed cluster's PID 1 to go", func() bool {
		return syscall.Kill(st.Reaper, 0) != nil || isZombie(st.Reaper)
	})
	c.must("shutdown")
	if links := smpcLinks(t); len(links) != 0 {
		t.Errorf("links left: %v", links)
	}
	for name, was := range forwardingWas {
		if got := readSysctl(t, name); got != was {
			t.Errorf("%s is %s after the crash and the next boot's shutdown, was %s", name, got, was)
		}
	}
	for _, name := range nftTables(t) {
		if strings.HasPrefix(name, "smpc") {
			t.Errorf("nftables table %s left", name)
		}
	}
}

// isZombie says whether host process pid has ended but not been reaped
// (its parent, a crashed boot process, is gone, and init reaps it soon).
func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && i+2 < len(b) && b[i+2] == 'Z'
}

// A UDP client that sends before its server exists (started just before
// it) reaches the server once the forward appears: the host's connection
// tracking forgets the flow's first, unforwarded entry.
func TestUDPClientBeforeServer(t *testing.T) {
	c := boot(t, "--subnet", "10.79.0.0/24")
	nw := c.network()
	for _, tt := range []struct {
		family, network string
		to              string // the host's address the client sends to
		port            int
		bind            string
	}{
		{"ipv4", "udp4", "127.0.0.1", 18555, "AF_INET, socket.SOCK_DGRAM)\ns.bind(('0.0.0.0'"},
		// The host's ::1 takes the sendmsg redirect, which needs no
		// forgetting; its face address takes dnat-local, as 127.0.0.1 does.
		{"ipv6", "udp6", nw.Gateway6, 18556, "AF_INET6, socket.SOCK_DGRAM)\ns.bind(('::'"},
	} {
		t.Run(tt.family, func(t *testing.T) {
			if tt.to == "" {
				t.Skip("the cluster has no IPv6")
			}
			conn, err := net.Dial(tt.network, net.JoinHostPort(tt.to, strconv.Itoa(tt.port)))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			stop := make(chan struct{})
			defer close(stop)
			go func() {
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					case <-time.After(50 * time.Millisecond):
						conn.Write([]byte(fmt.Sprintf("ping %d", i))) // refused until the forward: no matter
					}
				}
			}()
			time.Sleep(500 * time.Millisecond) // the flow is tracked, unforwarded
			out := c.must("run", "--on", "2", "--", "timeout", "10", "python3", "-c",
				fmt.Sprintf("import socket\ns = socket.socket(socket.%s, %d))\nprint(s.recvfrom(100)[0].decode())", tt.bind, tt.port))
			if !strings.HasPrefix(out, "ping ") {
				t.Errorf("the server on OSlet 2 got %q from the client that started first", out)
			}
		})
	}
}

// The conflict rule, for a port the host and an OSlet both listen on: the
// host's own clients reach the host's server; everyone else reaches whoever
// listened first.
func TestHostAndOSletOnOnePort(t *testing.T) {
	c := boot(t, "--subnet", "10.79.1.0/24")
	const port = 18777
	// OSlet 2 first, serving a file that names it.
	pid := c.serveWho(2, "0.0.0.0", port, "oslet 2\n")
	defer c.smpc("kill", strconv.Itoa(pid))
	c.waitPort(t, "tcp", port, 2, forwarded)
	if body := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/who", port)); body != "oslet 2\n" {
		t.Fatalf("before the host's server, the host reached %q", body)
	}
	// Then the host, on the same port.
	hostDir := t.TempDir()
	os.WriteFile(filepath.Join(hostDir, "who"), []byte("host\n"), 0o644)
	host := exec.Command("python3", "-m", "http.server", "--bind", "0.0.0.0", "--directory", hostDir, strconv.Itoa(port))
	if err := host.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { host.Process.Kill(); host.Wait() }()
	c.waitPort(t, "tcp", port, statedir.HostListener, func(p portEntry) bool { return p.HostClients })
	waitFor(t, "the host's own clients to reach the host's server", func() bool {
		body, err := tryGet(fmt.Sprintf("http://127.0.0.1:%d/who", port))
		return err == nil && body == "host\n"
	})
	// The OSlets, through the cluster's face, still reach OSlet 2's.
	if out := c.must("run", "--on", "1", "--", "curl", "-sS", "-m", "3", fmt.Sprintf("http://smpc-cluster:%d/who", port)); out != "oslet 2\n" {
		t.Errorf("from OSlet 1 through smpc-cluster: %q", out)
	}
	out := c.must("ports")
	if !strings.Contains(out, "forwarded, but not from the host itself") || !strings.Contains(out, "the host's own clients (oslet 2 holds the port)") {
		t.Errorf("smpc ports does not show the rule:\n%s", out)
	}
}

// TestLocalhostAcrossOSlets checks that localhost is the cluster's, as on
// one machine: a process on OSlet 1 reaches OSlet 2's server through its
// own 127.0.0.1, and sees 127.0.0.1 as its peer; once OSlet 1 serves the
// port itself, its own server wins, while OSlet 2 keeps reaching its own.
func TestLocalhostAcrossOSlets(t *testing.T) {
	c := boot(t, "--subnet", "10.79.2.0/24")
	if _, err := os.Stat("/sys/fs/cgroup/unified"); err != nil && !unified() {
		t.Skip("the connect-time redirect needs a cgroup v2 hierarchy")
	}
	const port = 18778
	serve := func(k int) int { return c.serveWho(k, "0.0.0.0", port, fmt.Sprintf("oslet %d\n", k)) }
	get := func(k int, host string) string {
		out, _ := c.smpc("run", "--on", strconv.Itoa(k), "--", "curl", "-sS", "-m", "3", fmt.Sprintf("http://%s:%d/who", host, port))
		return out
	}
	server2 := serve(2)
	defer c.smpc("kill", strconv.Itoa(server2))
	c.waitPort(t, "tcp", port, 2, forwarded)
	for _, host := range []string{"127.0.0.1", "localhost"} {
		if got := get(1, host); got != "oslet 2\n" {
			t.Errorf("OSlet 1's %s:%d reached %q, want OSlet 2's server", host, port, got)
		}
	}
	peer := c.must("run", "--on", "1", "--", "python3", "-c", fmt.Sprintf(
		"import socket; s = socket.create_connection(('127.0.0.1', %d)); print(s.getpeername()[0])", port))
	if strings.TrimSpace(peer) != "127.0.0.1" {
		t.Errorf("OSlet 1's client sees its peer as %q, want 127.0.0.1", peer)
	}
	if got := get(2, "127.0.0.1"); got != "oslet 2\n" {
		t.Errorf("OSlet 2's own 127.0.0.1:%d reached %q", port, got)
	}

	// OSlet 1 serves the port too: its own processes reach its own server.
	server1 := serve(1)
	defer c.smpc("kill", strconv.Itoa(server1))
	waitFor(t, "OSlet 1's localhost to reach its own server", func() bool { return get(1, "127.0.0.1") == "oslet 1\n" })
	if got := get(2, "127.0.0.1"); got != "oslet 2\n" {
		t.Errorf("with both serving, OSlet 2's 127.0.0.1:%d reached %q", port, got)
	}
	// OSlet 2's server goes: OSlet 2's localhost reaches OSlet 1's.
	c.must("kill", strconv.Itoa(server2))
	waitFor(t, "OSlet 2's localhost to reach OSlet 1's server", func() bool { return get(2, "127.0.0.1") == "oslet 1\n" })

	// Through the face, smpc-cluster:P, the connection runs from OSlet 1's
	// address to OSlet 2's with no NAT: the server sees OSlet 1's address
	// (the NAT path would show the face's), the client the face as its peer.
	const facePort = port + 2
	echo := c.pidOf(c.must("run", "--on", "2", "--detach", "--", "python3", "-c", fmt.Sprintf(
		"import socket\ns = socket.create_server(('0.0.0.0', %d))\nwhile True:\n    c, a = s.accept(); c.sendall(a[0].encode()); c.close()", facePort)))
	defer c.smpc("kill", strconv.Itoa(echo))
	c.waitPort(t, "tcp", facePort, 2, forwarded)
	out := c.must("run", "--on", "1", "--", "python3", "-c", fmt.Sprintf(
		"import socket; s = socket.create_connection(('smpc-cluster', %d)); print(s.recv(100).decode(), s.getpeername()[0], s.getsockname()[0])", facePort))
	nw := c.network()
	want := fmt.Sprintf("%s %s %s", nw.Addrs[1], nw.Gateway, nw.Addrs[1])
	if strings.TrimSpace(out) != want {
		t.Errorf("OSlet 1 to smpc-cluster:%d: server saw, client's peer, client's own = %q, want %q", facePort, strings.TrimSpace(out), want)
	}
}

// TestLocalhostUDPAcrossOSlets checks the cluster's localhost for UDP, as
// a DNS or statsd client uses it: a process on OSlet 1 that sends to its
// own 127.0.0.1:P (connected or not) reaches OSlet 2's UDP server, and the
// replies come from 127.0.0.1:P as on one machine; once OSlet 1 serves P
// itself, its own server wins.
func TestLocalhostUDPAcrossOSlets(t *testing.T) {
	c := boot(t, "--subnet", "10.79.2.0/24")
	if _, err := partition.Cgroup2Root(); err != nil {
		t.Skip("the connect-time redirect needs a cgroup v2 hierarchy")
	}
	const port = 18781
	serve := func(k int, bind string) int {
		return c.pidOf(c.must("run", "--on", strconv.Itoa(k), "--detach", "--", "python3", "-c", fmt.Sprintf(
			"import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('%s', %d))\n"+
				"while True:\n    d, a = s.recvfrom(100); s.sendto(b'oslet %d', a)", bind, port, k)))
	}
	// Each client waits a second for its answer, and says "none" if none
	// came: a datagram, unlike a connection, is not refused.
	unconnected := fmt.Sprintf("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)\n"+
		"s.sendto(b'who', ('127.0.0.1', %d))\ntry:\n    d, a = s.recvfrom(100); print(d.decode(), a[0], a[1])\nexcept OSError:\n    print('none')", port)
	connected := fmt.Sprintf("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)\n"+
		"s.connect(('localhost', %d)); s.send(b'who')\ntry:\n    print(s.recv(100).decode(), s.getpeername()[0])\nexcept OSError:\n    print('none')", port)
	ask := func(k int, script string) string {
		out, _ := c.smpc("run", "--on", strconv.Itoa(k), "--", "python3", "-c", script)
		return strings.TrimSpace(out)
	}
	server2 := serve(2, "0.0.0.0")
	defer c.smpc("kill", strconv.Itoa(server2))
	c.waitPort(t, "udp", port, 2, forwarded)
	if got, want := ask(1, unconnected), fmt.Sprintf("oslet 2 127.0.0.1 %d", port); got != want {
		t.Errorf("OSlet 1's datagram to 127.0.0.1:%d: answer, from = %q, want %q", port, got, want)
	}
	if got, want := ask(1, connected), "oslet 2 127.0.0.1"; got != want {
		t.Errorf("OSlet 1's connected socket to localhost:%d: answer, peer = %q, want %q", port, got, want)
	}
	if got, want := ask(2, unconnected), fmt.Sprintf("oslet 2 127.0.0.1 %d", port); got != want {
		t.Errorf("OSlet 2's datagram to its own 127.0.0.1:%d: %q, want %q", port, got, want)
	}
	// OSlet 1's own server, on its 127.0.0.1 alone (a UDP server there is
	// not the cluster's): its own processes reach it.
	server1 := serve(1, "127.0.0.1")
	defer c.smpc("kill", strconv.Itoa(server1))
	waitFor(t, "OSlet 1's localhost to reach its own UDP server", func() bool {
		return ask(1, unconnected) == fmt.Sprintf("oslet 1 127.0.0.1 %d", port)
	})
	if got, want := ask(2, unconnected), fmt.Sprintf("oslet 2 127.0.0.1 %d", port); got != want {
		t.Errorf("with both serving, OSlet 2's datagram: %q, want %q", got, want)
	}
}

// TestLoopbackServerIsTheClusters checks that a TCP server bound to its
// OSlet's 127.0.0.1 alone, as databases listen by default, serves the
// cluster's localhost: the host and another OSlet reach it at their own
// 127.0.0.1, smpc ports lists it with its scope, and a machine on the
// cluster's bridge (a network namespace standing in for one) does not
// reach it.
func TestLoopbackServerIsTheClusters(t *testing.T) {
	if _, err := partition.Cgroup2Root(); err != nil {
		t.Skip("the connect-time redirect needs a cgroup v2 hierarchy")
	}
	c := boot(t, "--subnet", "10.79.3.0/24")
	const port = 18779
	pid := c.serveWho(2, "127.0.0.1", port, "oslet 2's loopback\n")
	defer c.smpc("kill", strconv.Itoa(pid))
	c.waitPort(t, "tcp", port, 2, func(p portEntry) bool { return p.Forwarded && p.Scope == "loopback" })
	if body := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/who", port)); body != "oslet 2's loopback\n" {
		t.Errorf("the host's 127.0.0.1:%d reached %q", port, body)
	}
	if out, _ := c.smpc("run", "--on", "1", "--", "curl", "-sS", "-m", "3", fmt.Sprintf("http://localhost:%d/who", port)); out != "oslet 2's loopback\n" {
		t.Errorf("OSlet 1's localhost:%d reached %q", port, out)
	}
	if out, _ := c.smpc("run", "--on", "2", "--", "curl", "-sS", "-m", "3", fmt.Sprintf("http://127.0.0.1:%d/who", port)); out != "oslet 2's loopback\n" {
		t.Errorf("OSlet 2's own 127.0.0.1:%d reached %q", port, out)
	}
	if out := c.must("ports"); !strings.Contains(out, "localhost of the cluster") {
		t.Errorf("smpc ports does not show the loopback server's scope:\n%s", out)
	}

	// Another machine on the bridge: OSlet 2's address does not serve it.
	nw := c.network()
	outside := c.machineOnBridge(t, "10.79.3.200/24", "fd00:e2e:3::c8/64")
	url := fmt.Sprintf("http://%s:%d/who", nw.Addrs[2], port)
	if out, err := outside("curl", "-sS", "-m", "3", url); err == nil {
		t.Errorf("a machine on the bridge reached the loopback server at %s: %q", url, out)
	}
	// The server goes, and so does the relay.
	c.must("kill", strconv.Itoa(pid))
	waitFor(t, "the loopback server's port to go", func() bool {
		for _, p := range c.ports() {
			if p.Port == port {
				return false
			}
		}
		return true
	})
}

// clusterNetwork is the network record of cluster.json.
type clusterNetwork struct {
	Bridge   string         `json:"bridge"`
	Gateway  string         `json:"gateway"`
	Addrs    map[int]string `json:"addresses"`
	Gateway6 string         `json:"gateway6"`
	Addrs6   map[int]string `json:"addresses6"`
}

// network reads the cluster's network record: its bridge, its face and
// the OSlets' addresses.
func (c *cluster) network() clusterNetwork {
	c.t.Helper()
	var st struct {
		Network clusterNetwork `json:"network"`
	}
	b, err := os.ReadFile(filepath.Join(c.dir, "cluster.json"))
	if err == nil {
		err = json.Unmarshal(b, &st)
	}
	if err != nil || st.Network.Bridge == "" {
		c.t.Fatalf("cluster.json has no network record: %v", err)
	}
	return st.Network
}

// serveWho starts python's http.server on OSlet k, bound to bind, port, in
// a directory of /gtmp whose file "who" says text; it returns the server's
// PID.
func (c *cluster) serveWho(k int, bind string, port int, text string) int {
	c.t.Helper()
	dir := fmt.Sprintf("who-%d-%s-%d", k, bind, port)
	os.MkdirAll(filepath.Join(c.dir, "gtmp", dir), 0o755)
	os.WriteFile(filepath.Join(c.dir, "gtmp", dir, "who"), []byte(text), 0o644)
	return c.pidOf(c.must("run", "--on", strconv.Itoa(k), "--detach", "--", "python3", "-m", "http.server", "--bind", bind, "--directory", "/gtmp/"+dir, strconv.Itoa(port)))
}

// TestClustersShareHostSwitches boots two clusters on a host that forwards
// nothing: the first to boot turns forwarding on, its shutdown leaves it
// on while the second runs, and the second's puts every switch back as the
// host had it.
func TestClustersShareHostSwitches(t *testing.T) {
	needRoot(t)
	switches := []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"}
	hostHad := map[string]string{}
	for _, name := range switches {
		hostHad[name] = readSysctl(t, name)
	}
	write := func(name, value string) {
		if err := os.WriteFile("/proc/sys/"+name, []byte(value), 0); err != nil {
			t.Fatal(err)
		}
	}
	defer func() {
		for name, v := range hostHad {
			write(name, v)
		}
	}()
	for _, name := range switches {
		write(name, "0")
	}
	acceptRAWas := acceptRA(t)
	check := func(when, want string) {
		t.Helper()
		for _, name := range switches {
			if got := readSysctl(t, name); got != want {
				t.Errorf("%s: %s is %s, want %s", when, name, got, want)
			}
		}
	}
	first := boot(t, "--subnet", "10.79.6.0/24")
	second := &cluster{t: t, dir: first.dir + "-second"}
	second.smpc("shutdown") // a previous run's leftovers
	second.must("boot", "--detach", "--oslets", "2", "--subnet", "10.79.7.0/24")
	t.Cleanup(func() { second.smpc("shutdown") })
	check("with both clusters up", "1")
	first.must("shutdown")
	check("after the first cluster's shutdown, the second still up", "1")
	second.must("shutdown")
	check("after both shut down", "0")
	for name, was := range acceptRAWas {
		if got, err := os.ReadFile("/proc/sys/net/ipv6/conf/" + name + "/accept_ra"); err == nil && strings.TrimSpace(string(got)) != was {
			t.Errorf("accept_ra of %s is %s after both shut down, was %s", name, strings.TrimSpace(string(got)), was)
		}
	}
}
