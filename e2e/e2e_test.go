// Package e2e boots real clusters as root and drives them through the smpc
// command line, as a user would.
package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smpc-cluster/smpc/internal/vproc"
)

var smpcBin string

func TestMain(m *testing.M) {
	if os.Getenv("SMPC_E2E_HELPER") != "" {
		// This is the test binary started as a helper process (see
		// testBinary); smpc is built already.
		smpcBin = os.Getenv("SMPC_BIN")
		os.Exit(m.Run())
	}
	// What the shell that ran go test left open is not the tests' to hand
	// on (smpc run hands over every descriptor its caller leaves open).
	vproc.CloseOnExecAbove(2)
	if dir := os.Getenv("SMPC_E2E_BINARIES"); dir != "" {
		// Built already, as e2e/vm/run builds them for its guest.
		smpcBin = filepath.Join(dir, "smpc")
		os.Exit(m.Run())
	}
	// The binary lives outside /tmp, which is private inside OSlets, and is
	// readable by everyone, since tests run it as nobody too.
	dir, err := os.MkdirTemp("/var/tmp", "smpc-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Chmod(dir, 0o755)
	// smpc and smpcd, built as the README builds them: static, as smpc
	// starts faster so.
	smpcBin = filepath.Join(dir, "smpc")
	build := exec.Command("go", "build", "-o", dir+"/", "../cmd/smpc", "../cmd/smpcd")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build smpc and smpcd:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("end-to-end tests boot real clusters (cgroups, namespaces): run them as root")
	}
}

// cluster is a booted cluster on its own state dir.
type cluster struct {
	t   *testing.T
	dir string
	// in, when set, runs smpc in the namespaces of that process (a
	// container's), with nsenter.
	in int
	// from, when set, is the cgroup (a directory) nsenter starts in: an
	// administrator's session, outside the container's cgroup namespace.
	from string
}

func boot(t *testing.T, args ...string) *cluster {
	t.Helper()
	return bootIn(t, "", args...)
}

// bootIn boots a cluster from the cgroup v2 cgroup (a path below the
// hierarchy's root), as smpc boot run from a login session or a service
// would be; from the test's own cgroup when cgroup is "".
func bootIn(t *testing.T, cgroup string, args ...string) *cluster {
	t.Helper()
	needRoot(t)
	c := &cluster{t: t, dir: "/run/smpc-e2e-" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))}
	exec.Command(smpcBin, "shutdown", "--state-dir", c.dir).Run() // a previous run's leftovers
	// A test asks for the OSlets it needs: the default plan follows the
	// machine (one OSlet per NUMA node or L3 domain), and may be one.
	if !slices.Contains(args, "--oslets") && !slices.Contains(args, "--plan") {
		args = append([]string{"--oslets", "2"}, args...)
	}
	cmd := exec.Command(smpcBin, append([]string{"--state-dir", c.dir, "boot", "--detach"}, args...)...)
	cmd.Dir = "/"
	if cgroup != "" {
		dir, err := os.Open(filepath.Join("/sys/fs/cgroup", cgroup))
		if err != nil {
			t.Fatal(err)
		}
		defer dir.Close()
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd())}
	}
	out, code := run(cmd)
	if code != 0 {
		t.Fatalf("boot: exit %d: %s", code, out)
	}
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := filepath.Glob(filepath.Join(c.dir, "*.log"))
			for _, l := range logs {
				b, _ := os.ReadFile(l)
				t.Logf("%s:\n%s", l, b)
			}
		}
		c.smpc("shutdown")
	})
	return c
}

// smpc runs the command line against the cluster and returns its combined
// output and exit status.
func (c *cluster) smpc(args ...string) (string, int) {
	c.t.Helper()
	cmd := exec.Command(smpcBin, append([]string{"--state-dir", c.dir}, args...)...)
	if c.in != 0 {
		cmd = exec.Command("nsenter", append([]string{"-t", strconv.Itoa(c.in), "-C", "-m", "--", smpcBin, "--state-dir", c.dir}, args...)...)
		if c.from != "" {
			from, err := os.Open(c.from)
			if err != nil {
				c.t.Fatal(err)
			}
			defer from.Close()
			cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(from.Fd())}
		}
	}
	// A directory every OSlet sees: the test's own may lie under the
	// host's /tmp, and programs that read $PWD (a pyenv shim) would not
	// find it. Tests of the working directory set their own.
	cmd.Dir = "/"
	return run(cmd)
}

func run(cmd *exec.Cmd) (string, int) {
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), ee.ExitCode()
	}
	if err != nil {
		return err.Error(), -1
	}
	return out.String(), 0
}

func (c *cluster) must(args ...string) string {
	c.t.Helper()
	out, code := c.smpc(args...)
	if code != 0 {
		c.t.Fatalf("smpc %v: exit %d: %s", args, code, out)
	}
	return out
}

// inside runs smpc inside OSlet k, as a process there would.
func (c *cluster) inside(k int, args ...string) (string, int) {
	c.t.Helper()
	return c.smpc(append([]string{"run", "--on", strconv.Itoa(k), "--", smpcBin}, args...)...)
}

// bootState is what the tests read of a cluster's boot record.
type bootState struct {
	Inits      map[string]int `json:"inits"`
	Reaper     int            `json:"reaper"`
	Supervisor int            `json:"supervisor"`
}

func (c *cluster) state() (st bootState) {
	b, err := os.ReadFile(filepath.Join(c.dir, "cluster.json"))
	if err != nil {
		c.t.Fatal(err)
	}
	json.Unmarshal(b, &st)
	return st
}

type proc struct {
	PID    int32  `json:"pid"`
	OSlet  int    `json:"oslet"`
	Parent int32  `json:"ppid"`
	State  string `json:"state"`
	Cmd    string `json:"command"`
	Policy string `json:"policy"`
}

// find returns the process pid as ps shows it.
func (c *cluster) find(pid string) (proc, bool) {
	c.t.Helper()
	for _, p := range c.ps() {
		if strconv.Itoa(int(p.PID)) == pid {
			return p, true
		}
	}
	return proc{}, false
}

// initPID returns OSlet k's init's PID in the cluster.
func (c *cluster) initPID(k int) int32 {
	c.t.Helper()
	out := c.must("status", "--json")
	var st []struct {
		Index   int   `json:"index"`
		InitPID int32 `json:"init_pid"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		c.t.Fatalf("status --json: %v: %s", err, out)
	}
	for _, o := range st {
		if o.Index == k {
			return o.InitPID
		}
	}
	c.t.Fatalf("status --json has no OSlet %d: %s", k, out)
	return 0
}

func (c *cluster) ps() []proc {
	c.t.Helper()
	// ps exits 1 with an OSlet down, and lists the others all the same.
	out, _ := c.smpc("ps", "--json")
	var ps []proc
	if err := json.Unmarshal([]byte(strings.SplitN(out, "\n", 2)[0]), &ps); err != nil {
		c.t.Fatalf("ps --json: %v: %s", err, out)
	}
	return ps
}

// pidOf reads the PID that smpc run --detach printed.
func (c *cluster) pidOf(out string) int {
	c.t.Helper()
	pid, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		c.t.Fatalf("smpc run --detach printed %q, not a PID", out)
	}
	return pid
}

// patience scales the tests' deadlines: SMPC_E2E_SLOWDOWN=N gives every
// wait N times as long, for a machine that runs N times slower (e2e/vm/run's
// emulated guest).
var patience = func() time.Duration {
	if n, err := strconv.Atoi(os.Getenv("SMPC_E2E_SLOWDOWN")); err == nil && n > 1 {
		return time.Duration(n)
	}
	return 1
}()

func waitFor(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second * patience)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestPlanAndBadPlans(t *testing.T) {
	out, code := run(exec.Command(smpcBin, "plan", "--json"))
	if code != 0 || !strings.Contains(out, `"oslets"`) {
		t.Fatalf("plan --json: %d %s", code, out)
	}
	dir := t.TempDir()
	bad := map[string]string{
		"overlap":   `{"version":1,"oslets":[{"index":1,"cpus":"0","mems":"0","memory":67108864,"pids":100},{"index":2,"cpus":"0","mems":"0","memory":67108864,"pids":100}]}`,
		"no cpu":    `{"version":1,"oslets":[{"index":1,"cpus":"999","mems":"0","memory":67108864,"pids":100}]}`,
		"zero mem":  `{"version":1,"oslets":[{"index":1,"cpus":"0","mems":"0","memory":0,"pids":100}]}`,
		"duplicate": `{"version":1,"oslets":[{"index":1,"cpus":"0","mems":"0","memory":67108864,"pids":100},{"index":1,"cpus":"1","mems":"0","memory":67108864,"pids":100}]}`,
		"no node":   `{"version":1,"oslets":[{"index":1,"cpus":"0","mems":"7","memory":67108864,"pids":100}]}`,
	}
	for name, body := range bad {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".json")
		os.WriteFile(path, []byte(body), 0o644)
		out, code := run(exec.Command(smpcBin, "boot", "--plan", path, "--state-dir", "/run/smpc-e2e-badplan"))
		if code == 0 || !strings.Contains(out, "plan: ") {
			t.Errorf("%s: boot exit %d: %s", name, code, out)
		}
	}
	if _, err := os.Stat("/run/smpc-e2e-badplan"); err == nil {
		t.Errorf("a refused plan left its state dir behind")
	}
	if out, code := run(exec.Command(smpcBin, "plan", "--oslets", "99")); code == 0 || !strings.Contains(out, "cannot make 99") {
		t.Errorf("plan --oslets 99: %d %s", code, out)
	}
}

// smpc is the small binary; boot and shutdown execute smpcd, the firmware,
// which smpc looks for beside itself, then on PATH.
func TestBootFindsFirmware(t *testing.T) {
	lone := filepath.Join(t.TempDir(), "smpc")
	b, err := os.ReadFile(smpcBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(lone, b, 0o755); err != nil {
		t.Fatal(err)
	}
	const dir = "/run/smpc-e2e-nofirmware"
	cmd := exec.Command(lone, "boot", "--oslets", "2", "--state-dir", dir)
	cmd.Env = append(os.Environ(), "PATH=/usr/bin:/bin")
	out, code := run(cmd)
	if code != 1 || !strings.Contains(out, "smpcd, is neither beside "+lone+" nor on PATH") {
		t.Errorf("boot without smpcd: exit %d: %s", code, out)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("a boot that found no firmware left its state dir behind")
	}
	// On PATH, it is found; its help names the command the user typed.
	cmd = exec.Command(lone, "boot", "--help")
	cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(smpcBin)+":/usr/bin:/bin")
	if out, code := run(cmd); code != 0 || !strings.Contains(out, "smpc boot [flags]") {
		t.Errorf("boot --help with smpcd on PATH: exit %d: %s", code, out)
	}
}

func TestProcessesAcrossOSlets(t *testing.T) {
	c := boot(t)
	if out, code := c.smpc("boot"); code == 0 || !strings.Contains(out, "in use") {
		t.Errorf("second boot on a busy state dir: %d %s", code, out)
	}
	status := c.must("status")
	if strings.Count(status, " up ") != 2 {
		t.Fatalf("status: %s", status)
	}

	// Exit statuses, the environment, the namespaces.
	if _, code := c.smpc("run", "--on", "2", "--", "sh", "-c", "exit 3"); code != 3 {
		t.Errorf("exit 3 came back as %d", code)
	}
	out := c.must("run", "--on", "2", "--", "sh", "-c", `echo $SMPC_OSLET $$ $(hostname); mountpoint -q /gtmp && echo gtmp`)
	host, _ := os.Hostname()
	if f := strings.Fields(out); len(f) < 4 || f[0] != "2" || f[2] != host || f[3] != "gtmp" {
		t.Errorf("process on OSlet 2 sees: %q", out)
	}
	if _, code := c.smpc("run", "--on", "1", "--", "nosuchprogram"); code != 127 {
		t.Errorf("missing program: exit %d", code)
	}
	if out, code := c.smpc("run", "--on", "9", "--", "true"); code != 125 || !strings.Contains(out, "oslet 9 does not exist") {
		t.Errorf("unknown OSlet: %d %s", code, out)
	}

	// A real pipe between two OSlets, and the working directory travels.
	sh := exec.Command("sh", "-c", smpcBin+" --state-dir "+c.dir+" run --on 1 -- seq 1 10000 | "+smpcBin+" --state-dir "+c.dir+" run --on 2 -- wc -l")
	sh.Dir = "/" // a directory every OSlet sees, wherever the test runs
	if out, code := run(sh); code != 0 || strings.TrimSpace(out) != "10000" {
		t.Errorf("pipe across OSlets: %d %q", code, out)
	}
	wd := t.TempDir() // under the host's /tmp, which OSlets do not see by path
	os.WriteFile(filepath.Join(wd, "marker"), []byte("here"), 0o644)
	cmd := exec.Command(smpcBin, "--state-dir", c.dir, "run", "--on", "2", "--", "cat", "marker")
	cmd.Dir = wd
	if out, code := run(cmd); code != 0 || out != "here" {
		t.Errorf("working directory: %d %q", code, out)
	}

	// Detach, ps, kill, wait.
	pid := strings.TrimSpace(c.must("run", "--detach", "--on", "2", "--", "sleep", "60"))
	if p, ok := c.find(pid); !ok || p.OSlet != 2 || p.Cmd != "sleep 60" {
		t.Fatalf("ps shows %s as %+v, %v; want sleep 60 on OSlet 2", pid, p, ok)
	}
	if out, code := c.smpc("kill", "-NOSUCH", pid); code == 0 || !strings.Contains(out, "unknown signal") {
		t.Errorf("bad signal: %d %s", code, out)
	}
	c.must("kill", "-USR1", pid)
	out, code := c.smpc("wait", pid)
	if code != 138 || !strings.Contains(out, "SIGUSR1") {
		t.Errorf("wait after SIGUSR1: %d %s", code, out)
	}
	if out, code := c.smpc("wait", pid); code != 138 {
		t.Errorf("wait for a process that ended shortly before: %d %s", code, out)
	}
	if out, code := c.smpc("kill", pid); code == 0 || !strings.Contains(out, "no such process") {
		t.Errorf("kill of an ended process: %d %s", code, out)
	}
	// A process group.
	pg := strings.TrimSpace(c.must("run", "--detach", "--on", "1", "--", "sh", "-c", "sleep 60 & sleep 60; wait"))
	c.must("kill", "-KILL", "--", "-"+pg)
	if _, code := c.smpc("wait", pg); code != 137 {
		t.Errorf("group kill: wait gave %d", code)
	}

	// From inside an OSlet, with no flag: one system.
	if out, code := c.inside(1, "run", "--on", "2", "--", "sh", "-c", "echo $SMPC_OSLET"); code != 0 || strings.TrimSpace(out) != "2" {
		t.Errorf("run from inside OSlet 1: %d %q", code, out)
	}
	if out, code := c.inside(2, "ps"); code != 0 || !strings.Contains(out, "oslet-init") {
		t.Errorf("ps from inside: %d %s", code, out)
	}
	// The inherited launch policy: children of a round-robin process spread.
	out = c.must("run", "--on", "1", "--", smpcBin, "run", "--policy", "round-robin", "--", "sh", "-c",
		fmt.Sprintf("for i in 1 2 3 4; do %s run -- sh -c 'echo $SMPC_OSLET'; done", smpcBin))
	if got := strings.Fields(out); len(got) != 4 || got[0] == got[1] || got[0] != got[2] {
		t.Errorf("round-robin children landed on %v", got)
	}
	if got := strings.Fields(c.must("run", "--on", "1", "--", smpcBin, "run", "--", "sh", "-c", "echo $SMPC_OSLET")); len(got) != 1 || got[0] != "1" {
		t.Errorf("default local policy placed a child on %v", got)
	}
}

func TestPermissions(t *testing.T) {
	c := boot(t)
	nobody := []string{"setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", smpcBin}
	// An unprivileged process inside an OSlet gets its own uid on the other.
	out := c.must(append(append([]string{"run", "--on", "1", "--"}, nobody...), "run", "--on", "2", "--", "id", "-u")...)
	if strings.TrimSpace(out) != "65534" {
		t.Errorf("nobody's process runs as %q", out)
	}
	pid := strings.TrimSpace(c.must("run", "--detach", "--on", "2", "--", "sleep", "60"))
	out, code := c.smpc(append(append([]string{"run", "--on", "1", "--"}, nobody...), "kill", "-KILL", pid)...)
	if code == 0 || !strings.Contains(out, "not permitted") {
		t.Errorf("nobody killed root's process: %d %s", code, out)
	}
	c.must("kill", pid)
	// The host socket is for root and the booting user only.
	cmd := exec.Command("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", smpcBin, "--state-dir", c.dir, "run", "--on", "1", "--", "id")
	if out, code := run(cmd); code == 0 || !strings.Contains(out, "permission denied") {
		t.Errorf("nobody used the host socket: %d %s", code, out)
	}
}

func TestOrphanIsReaped(t *testing.T) {
	c := boot(t)
	cmd := exec.Command(smpcBin, "--state-dir", c.dir, "run", "--on", "2", "--", "sleep", "3")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var child proc
	waitFor(t, "the sleep to start", func() bool {
		for _, p := range c.ps() {
			if p.Cmd == "sleep 3" {
				child = p
				return true
			}
		}
		return false
	})
	cmd.Process.Kill() // the remote parent dies before it waits
	cmd.Wait()
	waitFor(t, "re-parenting to the init", func() bool {
		for _, p := range c.ps() {
			if p.PID == child.PID {
				return p.Parent == c.initPID(2)
			}
		}
		return false
	})
	out, code := c.smpc("wait", strconv.Itoa(int(child.PID)))
	if code != 0 || !strings.Contains(out, "exited with status 0") {
		t.Errorf("wait for the orphan: %d %s", code, out)
	}
	for _, p := range c.ps() {
		if p.State == "Z" {
			t.Errorf("zombie left: %+v", p)
		}
	}
}

func TestOSletDeath(t *testing.T) {
	c := boot(t)
	pid := strings.TrimSpace(c.must("run", "--detach", "--on", "2", "--", "sleep", "60"))
	survivor := strings.TrimSpace(c.must("run", "--detach", "--on", "1", "--", "sleep", "60"))
	waiter := exec.Command(smpcBin, "--state-dir", c.dir, "wait", pid)
	var wout bytes.Buffer
	waiter.Stdout, waiter.Stderr = &wout, &wout
	if err := waiter.Start(); err != nil {
		t.Fatal(err)
	}
	// The wait under test is one already blocked on OSlet 2 (a later one
	// learns the end from the record of lost processes).
	waitFor(t, "the waiter to block on OSlet 2", func() bool {
		var st []struct {
			Index int `json:"index"`
			Waits int `json:"waits"`
		}
		json.Unmarshal([]byte(c.must("status", "--json")), &st)
		return len(st) == 2 && st[1].Waits == 1
	})

	init2 := c.state().Inits["2"]
	if err := exec.Command("kill", "-9", strconv.Itoa(init2)).Run(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitFor(t, "the cluster to see OSlet 2 down", func() bool {
		out, _ := c.smpc("status")
		return strings.Contains(out, "down")
	})
	// The other OSlet notices by itself too.
	waitFor(t, "OSlet 1 to see OSlet 2 down", func() bool {
		out, _ := c.inside(1, "status")
		return strings.Contains(out, "down")
	})
	if d := time.Since(start); d > time.Second {
		t.Errorf("noticed after %v, want under a second", d)
	}
	waiter.Wait()
	if code := waiter.ProcessState.ExitCode(); code != 137 {
		t.Errorf("a wait pending on the dead OSlet exited %d: %s", code, wout.String())
	}
	for _, args := range [][]string{{"run", "--on", "2", "--", "true"}, {"kill", pid}, {"wait", pid}, {"ps"}} {
		out, code := c.smpc(args...)
		if code == 0 || !strings.Contains(out, "oslet 2") || !strings.Contains(out, "down") {
			t.Errorf("smpc %v with OSlet 2 down: %d %s", args, code, out)
		}
	}
	if out, _ := c.smpc("ps"); !strings.Contains(out, "sleep 60") {
		t.Errorf("ps with OSlet 2 down does not show OSlet 1's processes:\n%s", out)
	}
	if _, code := c.smpc("wait", pid); code != 137 {
		t.Errorf("wait on the dead OSlet's process: exit %d", code)
	}
	if out, code := c.inside(1, "run", "--on", "2", "--", "true"); code != 125 || !strings.Contains(out, "oslet 2 is down") {
		t.Errorf("run from OSlet 1 to the dead OSlet: %d %s", code, out)
	}
	// The survivor carries on.
	if out := c.must("run", "--on", "1", "--", "echo", "alive"); strings.TrimSpace(out) != "alive" {
		t.Errorf("OSlet 1 after OSlet 2 died: %q", out)
	}
	c.must("kill", survivor)
}

func TestShutdownLeavesNothing(t *testing.T) {
	c := boot(t)
	st := c.state()
	c.must("run", "--detach", "--on", "2", "--", "sleep", "60")
	c.must("shutdown")
	c.checkLeftNothing(st)
}

// checkLeftNothing checks, after a shutdown, that nothing of the cluster
// whose state was st is left: state dir, inits, PID 1, mounts, cgroups.
func (c *cluster) checkLeftNothing(st bootState) {
	t := c.t
	t.Helper()
	if _, err := os.Stat(c.dir); !os.IsNotExist(err) {
		t.Errorf("state dir %s left behind", c.dir)
	}
	for _, pid := range st.Inits {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			t.Errorf("init %d still runs", pid)
		}
	}
	if st.Reaper == 0 {
		t.Error("the state names no cluster PID 1")
	} else if _, err := os.Stat(fmt.Sprintf("/proc/%d", st.Reaper)); err == nil {
		t.Errorf("the cluster's PID 1 (host PID %d) still runs", st.Reaper)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), c.dir) {
		t.Errorf("mounts left behind:\n%s", mounts)
	}
	base := filepath.Base(c.dir)
	filepath.Walk("/sys/fs/cgroup", func(path string, info os.FileInfo, err error) error {
		if err == nil && info.IsDir() && strings.Contains(filepath.Base(path), base) {
			t.Errorf("cgroup left behind: %s", path)
			return filepath.SkipDir
		}
		return nil
	})
	if out, code := c.smpc("status"); code == 0 || !strings.Contains(out, "no cluster is running") {
		t.Errorf("status after shutdown: %d %s", code, out)
	}
}
