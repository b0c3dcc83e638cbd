package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// testBinary copies this test binary next to smpc, where OSlets see it (the
// go tool builds it under /tmp, which is private to each OSlet), so that a
// test can run its own helpers there.
func testBinary(t *testing.T) string {
	t.Helper()
	dst := filepath.Join(filepath.Dir(smpcBin), "e2e.test")
	if _, err := os.Stat(dst); err == nil {
		return dst
	}
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

// TestSocketHelper, run inside an OSlet by TestSocketRule, listens on TCP
// in its OSlet's network stack and starts /bin/true through smpc with the
// listening socket as standard input.
func TestSocketHelper(t *testing.T) {
	if os.Getenv("SMPC_E2E_HELPER") != "socket" {
		t.Skip("helper process for TestSocketRule")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"run"}, strings.Fields(os.Getenv("SMPC_RUN_FLAGS"))...)
	cmd := exec.Command(smpcBin, append(args, "--", "/bin/true")...)
	cmd.Stdin = f
	out, code := run(cmd)
	fmt.Printf("exit=%d %s\n", code, out)
}

// TestSocketRule checks the seed's rule: a process that would inherit a
// network socket is not created on another OSlet, unless the user says so;
// Unix sockets, which every OSlet shares, pass.
func TestSocketRule(t *testing.T) {
	c := boot(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	tcp, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	// A real connection: the client end and the accepted end.
	go func() {
		if conn, err := l.Accept(); err == nil {
			t.Cleanup(func() { conn.Close() })
		}
	}()
	dialed, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer dialed.Close()
	connFile, err := dialed.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer connFile.Close()
	pair, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	unixSock := os.NewFile(uintptr(pair[0]), "unix")
	defer unixSock.Close()
	defer syscall.Close(pair[1])

	fromHost := []struct {
		name  string
		stdin *os.File
		flags []string
		code  int
		says  string
	}{
		{"tcp listener to oslet 2", tcp, []string{"--on", "2"}, 125, "is a TCP/IP (inet) socket"},
		{"tcp listener, overridden", tcp, []string{"--on", "2", "--allow-sockets"}, 0, ""},
		{"tcp connection to oslet 2", connFile, []string{"--on", "2"}, 125, "is a TCP/IP (inet) socket"},
		{"tcp connection, overridden", connFile, []string{"--on", "2", "--allow-sockets"}, 0, ""},
		{"unix socket to oslet 2", unixSock, []string{"--on", "2"}, 0, ""},
	}
	for _, tt := range fromHost {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(smpcBin, append(append([]string{"--state-dir", c.dir, "run"}, tt.flags...), "--", "/bin/true")...)
			cmd.Stdin = tt.stdin
			out, code := run(cmd)
			if code != tt.code || !strings.Contains(out, tt.says) {
				t.Fatalf("exit %d, want %d with %q: %s", code, tt.code, tt.says, out)
			}
			if tt.code != 0 && !strings.Contains(out, "--allow-sockets") {
				t.Errorf("the refusal does not say how to override it: %s", out)
			}
		})
	}

	// Inside OSlet 1, a socket of OSlet 1's own stack may go to a child on
	// OSlet 1, not to one on OSlet 2.
	helper := testBinary(t)
	fromInside := []struct {
		flags, want string
	}{
		{"--on 1", "exit=0"},
		{"--on 2", "exit=125 smpc: oslet 2: spawn \"/bin/true\": refused"},
		{"--on 2 --allow-sockets", "exit=0"},
	}
	for _, tt := range fromInside {
		t.Run("inside oslet 1 "+tt.flags, func(t *testing.T) {
			out := c.must("run", "--on", "1", "--", "/usr/bin/env", "SMPC_E2E_HELPER=socket", "SMPC_BIN="+smpcBin,
				"SMPC_RUN_FLAGS="+tt.flags, helper, "-test.run=^TestSocketHelper$")
			if !strings.Contains(out, tt.want) {
				t.Fatalf("got %s, want %q", out, tt.want)
			}
		})
	}
}

// TestLaunchPolicy checks where processes land under each policy, and that a
// policy given to a process is inherited by its descendants: make under
// --policy least-loaded spreads its recipes over the OSlets, and under the
// default local policy keeps them home.
func TestLaunchPolicy(t *testing.T) {
	c := boot(t)
	oslet := func(out string) int {
		pid := strings.TrimSpace(out)
		p, ok := c.find(pid)
		if !ok {
			t.Fatalf("ps does not list %q", out)
		}
		return p.OSlet
	}
	killSleeps := func() {
		for _, p := range c.ps() {
			if p.Cmd == "sleep 100" || strings.Contains(p.Cmd, "while :") {
				c.smpc("kill", "-9", strconv.Itoa(int(p.PID)))
			}
		}
	}
	defer killSleeps()

	// make's recipes follow the policy make was started with. This runs
	// first, on an idle cluster: the load of a peer that an OSlet knows is
	// up to a heartbeat (250 ms) old.
	dir, err := os.MkdirTemp(filepath.Dir(smpcBin), "make-")
	if err != nil {
		t.Fatal(err)
	}
	makefile := "all: r1 r2 r3 r4 r5 r6\nr1 r2 r3 r4 r5 r6:\n\tsmpc run -- sh -c 'echo $$SMPC_OSLET > $@.out; sleep 0.5'\n"
	if err := os.WriteFile(filepath.Join(dir, "Makefile"), []byte(makefile), 0o644); err != nil {
		t.Fatal(err)
	}
	recipesRanOn := func(how ...string) map[string]bool {
		t.Helper()
		args := append(append([]string{"run"}, how...), "--", "/usr/bin/env", "PATH="+filepath.Dir(smpcBin)+":"+os.Getenv("PATH"),
			"make", "-s", "-j6", "-B", "-C", dir)
		c.must(args...)
		on := map[string]bool{}
		for i := 1; i <= 6; i++ {
			b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("r%d.out", i)))
			if err != nil {
				t.Fatal(err)
			}
			on[strings.TrimSpace(string(b))] = true
		}
		return on
	}
	if on := recipesRanOn("--policy", "least-loaded"); !on["1"] || !on["2"] {
		t.Errorf("make under least-loaded ran its recipes on OSlets %v only", on)
	}
	if on := recipesRanOn("--on", "2"); len(on) != 1 || !on["2"] {
		t.Errorf("make under the local policy ran its recipes on OSlets %v, want 2 only", on)
	}

	// Round-robin alternates.
	seen := map[int]int{}
	for i := 0; i < 4; i++ {
		seen[oslet(c.must("run", "--policy", "round-robin", "--detach", "--", "sleep", "100"))]++
	}
	if seen[1] != 2 || seen[2] != 2 {
		t.Errorf("round-robin placed 4 processes as %v", seen)
	}

	// Least-loaded avoids the OSlet whose CPU is busy (load counts
	// runnable processes; sleepers do not weigh).
	for i := 0; i < 2; i++ {
		c.must("run", "--on", "1", "--detach", "--", "sh", "-c", "while :; do :; done")
	}
	if k := oslet(c.must("run", "--policy", "least-loaded", "--detach", "--", "sleep", "100")); k != 2 {
		t.Errorf("least-loaded chose oslet %d, where oslet 1 is busier", k)
	}
	killSleeps()
}
