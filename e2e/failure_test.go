package e2e

import (
	"bufio"
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
)

// initStatus reads a field of OSlet k's init's /proc/PID/status on the
// host, such as VmRSS or Threads, as a number.
func (c *cluster) initStatus(k int, field string) int {
	c.t.Helper()
	pid := c.state().Inits[strconv.Itoa(k)]
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		c.t.Fatalf("oslet %d's init (pid %d): %v", k, pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, err := strconv.Atoi(strings.Fields(v)[0])
			if err != nil {
				c.t.Fatalf("%s: %q", field, line)
			}
			return n
		}
	}
	c.t.Fatalf("oslet %d's init has no %s", k, field)
	return 0
}

// serving says whether OSlet 1 still starts processes for its users and
// answers for the cluster, within the time a person would wait.
func (c *cluster) serving(t *testing.T) {
	t.Helper()
	start := time.Now()
	if out := c.must("run", "--on", "1", "--", "setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups", smpcBin, "run", "--on", "1", "--", "echo", "served"); strings.TrimSpace(out) != "served" {
		t.Errorf("another user on OSlet 1: %q", out)
	}
	if took := time.Since(start); took > 3*time.Second*patience {
		t.Errorf("another user on OSlet 1 waited %v to be served", took)
	}
	if out, code := c.smpc("status"); code != 0 {
		t.Errorf("status: exit %d: %s", code, out)
	}
}

// No user can bring an OSlet down through its init's socket: silent
// connections hold no thread of the init, and replies a client does not
// read are not buffered without bound.
func TestInitSurvivesItsUsers(t *testing.T) {
	c := boot(t, "--oslets", "2")
	c.shareScript("adversary.py")
	nobody := []string{"run", "--on", "1", "--", "setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", systemPython(t), "/gtmp/adversary.py"}
	threads := c.initStatus(1, "Threads")

	t.Run("silent connections", func(t *testing.T) {
		out, code := c.smpc(append(nobody, "silent", "3000", "3")...)
		if code != 0 || !strings.HasPrefix(out, "done") {
			t.Fatalf("adversary: exit %d: %s", code, out)
		}
		// Its connections are closed; the init never needed a thread for
		// one (before: one each for 5 s, until pids.max ended the OSlet).
		if got := c.initStatus(1, "Threads"); got > threads+8 {
			t.Errorf("the init has %d threads after the silent connections, %d before", got, threads)
		}
		c.serving(t)
	})

	t.Run("replies never read", func(t *testing.T) {
		pid := strings.TrimSpace(c.must(append([]string{"run", "--detach"}, append(nobody[1:], "noread", "100000")...)...))
		// The init reads the channel until its share of requests is taken,
		// then no more: the client's own sends block.
		time.Sleep(8 * time.Second) // past fabric.SendTimeout, while the adversary is blocked
		if rss := c.initStatus(1, "VmRSS"); rss > 200<<10 {
			t.Errorf("the init's memory grew to %d KiB under a client that does not read", rss)
		}
		c.serving(t)
		c.must("kill", "-KILL", pid)
	})
	if c.initStatus(1, "VmRSS") == 0 {
		t.Error("the init is gone")
	}
}

// systemPython is the distribution's python3, which every user may run (a
// python3 earlier on root's PATH, such as a pyenv shim, may not be).
func systemPython(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		t.Skip("the tests as another user need /usr/bin/python3 (.ci/run installs python3)")
	}
	return "/usr/bin/python3"
}

// bootSmall boots two OSlets whose first has little memory and few PIDs, so
// that its processes reach its limits quickly.
func bootSmall(t *testing.T, memory int64, pids int) *cluster {
	t.Helper()
	needRoot(t)
	out, code := run(exec.Command(smpcBin, "plan", "--oslets", "2", "--json"))
	if code != 0 {
		t.Fatalf("plan: %s", out)
	}
	var p map[string]any
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		t.Fatal(err)
	}
	first := p["oslets"].([]any)[0].(map[string]any)
	first["memory"], first["pids"] = memory, pids
	b, _ := json.Marshal(p)
	path := filepath.Join(t.TempDir(), "plan.json")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return boot(t, "--plan", path)
}

// The OOM killer of an OSlet whose processes fill its memory chooses among
// them, never the init: the init lives in a leaf of its own. The processes
// are smaller than the init (about 9 MB each against its 11), so that an
// OOM killer that could choose the init would.
func TestInitSurvivesOOM(t *testing.T) {
	py := systemPython(t)
	// The kernel charges a file's pages to the cgroup that first reads
	// them. Read python's here, outside the OSlet: charged to the OSlet,
	// its 60 copies' shared text would be reclaimed and read again, over
	// and over, before the OOM killer ran (minutes in the TCG guest).
	if out, err := exec.Command(py, "-c", "import time").CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", py, err, out)
	}
	c := bootSmall(t, 128<<20, 8192)
	out, code := c.smpc("run", "--on", "1", "--", "setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
		"sh", "-c", "for i in $(seq 60); do "+py+" -c 'import time; b = bytearray(1 << 20); b[::4096] = b\"x\" * len(b[::4096]); time.sleep(6)' & done; wait")
	t.Logf("the processes: exit %d: %.200s", code, out)
	if oomKills(t, c) == 0 {
		t.Fatal("the OSlet's OOM killer never ran: the test did not reach its path")
	}
	if c.initStatus(1, "VmRSS") == 0 {
		t.Fatal("OSlet 1's init is gone")
	}
	c.serving(t)
	// A process that the OOM killer ends is told as such, not as lost
	// with its OSlet, and status counts the OSlet's OOM kills.
	out, code = c.smpc("run", "--on", "1", "--", py, "-c", "b = bytearray(512 << 20); b[::4096] = b'x' * len(b[::4096])")
	if code != 137 || !strings.Contains(out, "killed by the OOM killer of oslet 1 (memory limit 128MiB)") {
		t.Errorf("a process past its OSlet's memory: exit %d: %s", code, out)
	}
	var st []struct {
		Index    int `json:"index"`
		OOMKills int `json:"oom_kills"`
	}
	json.Unmarshal([]byte(c.must("status", "--json")), &st)
	if len(st) != 2 || st[0].OOMKills < 2 || st[0].OOMKills != oomKills(t, c) {
		t.Errorf("status counts %+v OOM kills; the kernel %d", st, oomKills(t, c))
	}
}

// oomKills reads how many processes OSlet 1's OOM killer has killed.
func oomKills(t *testing.T, c *cluster) int {
	t.Helper()
	var f string
	if _, err := os.Stat("/sys/fs/cgroup/memory"); err == nil {
		f = filepath.Join(c.cgroupDir(t, 1, "memory"), "procs", "memory.oom_control") // v1
	} else {
		f = filepath.Join(c.cgroupDir(t, 1, ""), "procs", "memory.events") // v2
	}
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	t.Fatalf("no OOM kill count in %s", f)
	return 0
}

// A fork bomb that reaches the OSlet's pids limit leaves its init the
// threads it needs: the OSlet keeps serving, and the bomb can be stopped.
func TestInitSurvivesForkBomb(t *testing.T) {
	c := bootSmall(t, 1<<30, 300)
	pgid := strings.TrimSpace(c.must("run", "--detach", "--on", "1", "--", "setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
		"sh", "-c", "while :; do sleep 60 & done"))
	waitFor(t, "the bomb to reach the pids limit", func() bool {
		// pids.events counts the forks the limit refused.
		b, _ := os.ReadFile(filepath.Join(c.cgroupDir(t, 1, "pids"), "procs", "pids.events"))
		return strings.HasPrefix(string(b), "max ") && strings.TrimSpace(string(b)) != "max 0"
	})
	if out, code := c.smpc("ps"); code != 0 || !strings.Contains(out, "sleep 60") {
		t.Errorf("ps during the bomb: exit %d: %.300s", code, out)
	}
	if out, code := c.smpc("status"); code != 0 {
		t.Errorf("status during the bomb: exit %d: %s", code, out)
	}
	c.must("kill", "-KILL", "-"+pgid)
	waitFor(t, "the bomb to end", func() bool {
		out, _ := c.smpc("run", "--on", "1", "--", "true")
		return out == ""
	})
	c.serving(t)
}

// cgroupDir is the host directory of OSlet k's cgroup in a v1 hierarchy,
// or in the v2 one on a host that has no v1 hierarchies, found from its
// init's /proc/PID/cgroup (which names the init's leaf).
func (c *cluster) cgroupDir(t *testing.T, k int, hierarchy string) string {
	t.Helper()
	if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", hierarchy)); hierarchy != "" && err != nil {
		hierarchy = "" // cgroup v2 alone
	}
	pid := c.state().Inits[strconv.Itoa(k)]
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && parts[1] == hierarchy && strings.HasSuffix(parts[2], "/init") {
			return filepath.Join("/sys/fs/cgroup", hierarchy, strings.TrimSuffix(parts[2], "/init"))
		}
	}
	t.Fatalf("oslet %d's init is in no cgroup of %q", k, hierarchy)
	return ""
}

// No descriptor reaches a process that its starter did not hand over: not
// the init's own (its /dev/fuse among them), nor those the shell that ran
// smpc boot left open.
func TestNoDescriptorLeaks(t *testing.T) {
	needRoot(t)
	c := &cluster{t: t, dir: "/run/smpc-e2e-fdleaks"}
	exec.Command(smpcBin, "shutdown", "--state-dir", c.dir).Run()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	// Descriptors 3 and 4 of smpc boot, left open by its caller.
	boot := exec.Command(smpcBin, "--state-dir", c.dir, "boot", "--detach", "--oslets", "2")
	boot.ExtraFiles = []*os.File{r, w}
	if out, code := run(boot); code != 0 {
		t.Fatalf("boot: exit %d: %s", code, out)
	}
	t.Cleanup(func() { c.smpc("shutdown") })

	// No pipeline: the shell's own pipe to a sort would be listed too.
	const listFds = "ls /proc/$$/fd"
	for _, tt := range []struct {
		name string
		args []string
	}{
		{"smpc run", []string{"run", "--on", "2", "--", "sh", "-c", listFds}},
		{"remote spawn from an OSlet", []string{"run", "--on", "1", "--", smpcBin, "run", "--on", "2", "--", "sh", "-c", listFds}},
		{"a process's own child", []string{"run", "--on", "2", "--", "sh", "-c", "sh -c \"" + strings.ReplaceAll(listFds, "$$", "\\$\\$") + "\""}},
		{"under a spreading policy", []string{"run", "--policy", "round-robin", "--", "sh", "-c", listFds}},
	} {
		fds := strings.Fields(c.must(tt.args...))
		slices.Sort(fds)
		if !slices.Equal(fds, []string{"0", "1", "2"}) {
			t.Errorf("%s: the process has descriptors %v, want 0 1 2", tt.name, fds)
		}
	}
	// Every descriptor of an init above 2 is close-on-exec.
	for k, pid := range c.state().Inits {
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fdinfo", pid))
		for _, fd := range fds {
			if n, _ := strconv.Atoi(fd.Name()); n <= 2 {
				continue
			}
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd.Name()))
			if err != nil {
				continue
			}
			for _, line := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(line, "flags:"); ok {
					flags, _ := strconv.ParseUint(strings.TrimSpace(v), 8, 64)
					if flags&0o2000000 == 0 { // O_CLOEXEC
						target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
						t.Errorf("oslet %s's init: descriptor %s (%s) is not close-on-exec", k, fd.Name(), target)
					}
				}
			}
		}
	}
}

// Exit statuses that scripts can trust: a value that asks for nothing is
// refused, and status says when an OSlet is down.
func TestExitStatuses(t *testing.T) {
	for _, tt := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"plan", "--oslets", "0"}, 1, "--oslets 0: give at least 1"},
		{[]string{"plan", "--cpus-per-oslet", "0"}, 1, "--cpus-per-oslet 0: give at least 1"},
		{[]string{"boot", "--oslets", "0", "--state-dir", "/run/smpc-e2e-zero"}, 1, "--oslets 0: give at least 1"},
		{[]string{"run", "--on", "0", "--", "true"}, 125, "--on 0: OSlets are numbered from 1"},
		{[]string{"run", "--on", "-1", "--", "true"}, 125, "--on -1: OSlets are numbered from 1"},
		{[]string{"run", "--no-such-flag", "--", "true"}, 125, "unknown flag"},
		{[]string{"shm", "create", "x", "1M", "--on", "0"}, 1, "--on 0: OSlets are numbered from 1"},
	} {
		out, code := run(exec.Command(smpcBin, tt.args...))
		if code != tt.code || !strings.Contains(out, tt.msg) {
			t.Errorf("smpc %v: exit %d: %s; want exit %d and %q", tt.args, code, out, tt.code, tt.msg)
		}
	}
	if _, err := os.Stat("/run/smpc-e2e-zero"); err == nil {
		t.Error("a refused boot left its state dir behind")
	}

	c := boot(t, "--oslets", "2")
	if out, code := c.smpc("status"); code != 0 {
		t.Errorf("status of a whole cluster: exit %d: %s", code, out)
	}
	syscall.Kill(c.state().Inits["2"], syscall.SIGKILL)
	waitFor(t, "status to see OSlet 2 down", func() bool {
		out, code := c.smpc("status")
		return code == 1 && strings.Contains(out, "down")
	})
}

// shareScript copies testdata/NAME to the cluster's /gtmp, which every
// OSlet sees (the test's own directory may lie under the host's /tmp, which
// none sees).
func (c *cluster) shareScript(name string) {
	c.t.Helper()
	script, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		c.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.dir, "gtmp", name), script, 0o644); err != nil {
		c.t.Fatal(err)
	}
}

// The cluster runs on when its boot process dies, and a later shutdown
// still removes everything.
func TestBootProcessDeath(t *testing.T) {
	c := boot(t, "--oslets", "2")
	var st struct {
		Supervisor int `json:"supervisor"`
	}
	b, err := os.ReadFile(filepath.Join(c.dir, "cluster.json"))
	if err != nil {
		t.Fatal(err)
	}
	json.Unmarshal(b, &st)
	if err := syscall.Kill(st.Supervisor, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the boot process to go", func() bool { return syscall.Kill(st.Supervisor, 0) != nil || isZombie(st.Supervisor) })
	if out := c.must("run", "--on", "2", "--", "echo", "still here"); strings.TrimSpace(out) != "still here" {
		t.Errorf("run after the boot process died: %q", out)
	}
	c.must("status")
	c.must("shutdown")
	if _, err := os.Stat(c.dir); err == nil {
		t.Errorf("shutdown after the boot process died left %s", c.dir)
	}
}

// Shutdown stops processes as a host stops its services: SIGTERM, a grace
// period, then SIGKILL for what is left, which it names.
func TestShutdownIsGraceful(t *testing.T) {
	c := boot(t, "--oslets", "2")
	dir, err := os.MkdirTemp("/var/tmp", "smpc-e2e-graceful-") // seen by every OSlet
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	record := filepath.Join(dir, "database")
	// A database that finishes its clean-up when asked to stop.
	c.must("run", "--detach", "--on", "1", "--", "sh", "-c",
		"trap 'sleep 0.3; echo shut down cleanly > "+record+"; exit 0' TERM; echo running > "+record+"; while :; do sleep 0.1; done")
	// A program that ignores SIGTERM.
	stubborn := strings.TrimSpace(c.must("run", "--detach", "--on", "2", "--", "sh", "-c", "trap '' TERM; exec sleep 1000"))
	waitFor(t, "the database to start", func() bool {
		b, _ := os.ReadFile(record)
		return strings.TrimSpace(string(b)) == "running"
	})
	// It ignores SIGTERM once its shell has set the trap and become sleep.
	waitFor(t, "the stubborn program to ignore SIGTERM", func() bool {
		for _, p := range c.ps() {
			if strconv.Itoa(int(p.PID)) == stubborn && p.Cmd == "sleep 1000" {
				return true
			}
		}
		return false
	})
	start := time.Now()
	out, code := c.smpc("shutdown", "--grace", "1s")
	took := time.Since(start)
	if code != 0 {
		t.Fatalf("shutdown: exit %d: %s", code, out)
	}
	if b, _ := os.ReadFile(record); strings.TrimSpace(string(b)) != "shut down cleanly" {
		t.Errorf("the database did not shut down cleanly: %q", b)
	}
	if !strings.Contains(out, "pid "+stubborn+" on oslet 2: sleep 1000") {
		t.Errorf("shutdown does not name the process it had to kill (pid %s): %s", stubborn, out)
	}
	if took < time.Second || took > 8*time.Second {
		t.Errorf("shutdown with --grace 1s took %v", took)
	}
}

// A list longer than a frame holds comes back whole: smpc ps with 8,000
// processes on one OSlet, from the host and from inside an OSlet.
func TestLongLists(t *testing.T) {
	c := boot(t, "--oslets", "2")
	cc, err := exec.LookPath("cc")
	if err != nil {
		t.Skip("needs a C compiler to fork 8,000 processes quickly (.ci/run installs gcc)")
	}
	forker := filepath.Join(c.dir, "gtmp", "forker")
	if out, err := exec.Command(cc, "-O2", "-o", forker, "testdata/forker.c").CombinedOutput(); err != nil {
		t.Fatalf("cc: %v: %s", err, out)
	}
	cmd := exec.Command(smpcBin, "--state-dir", c.dir, "run", "--on", "1", "--", "/gtmp/forker", "8000")
	cmd.Dir = "/"
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Signal(syscall.SIGINT) // smpc run passes it to the forker's group
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("forker: %q %v", line, err)
	}
	for _, where := range [][]string{{"ps", "--json"}, {"run", "--on", "2", "--", "smpc", "ps", "--json"}} {
		out := c.must(where...)
		var procs []struct {
			OSlet   int    `json:"oslet"`
			Command string `json:"command"`
		}
		if err := json.Unmarshal([]byte(out), &procs); err != nil {
			t.Fatalf("smpc %v: %v", where, err)
		}
		forkers := 0
		for _, p := range procs {
			if p.OSlet == 1 && p.Command == "/gtmp/forker 8000" {
				forkers++
			}
		}
		if forkers != 8001 {
			t.Errorf("smpc %v lists %d forkers, want 8001", where, forkers)
		}
	}
}

// An init that is alive but does not answer (stopped) is reported as not
// answering within a bound, by its peers and on the host; the others carry
// on, and it is back once it answers again.
func TestHungOSlet(t *testing.T) {
	c := boot(t, "--oslets", "2")
	init2 := c.state().Inits["2"]
	if err := syscall.Kill(init2, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(init2, syscall.SIGCONT)
	start := time.Now()
	// The spawn's descriptors stay in the stopped init's socket until it
	// reads them: they must not be the test's pipe, which would then not
	// end.
	out := c.must("run", "--on", "1", "--", "sh", "-c", "smpc run --on 2 -- true </dev/null >/dev/null 2>/gtmp/hung.err; echo $?; cat /gtmp/hung.err")
	if !strings.HasPrefix(out, "125\n") || !strings.Contains(out, "oslet 2 is not answering") {
		t.Errorf("a spawn on the stopped OSlet 2 from OSlet 1: %s", out)
	}
	if took := time.Since(start); took > 10*time.Second*patience {
		t.Errorf("OSlet 1 took %v to report OSlet 2 not answering", took)
	}
	if out := c.must("run", "--on", "1", "--", "echo", "alive"); strings.TrimSpace(out) != "alive" {
		t.Errorf("OSlet 1 while OSlet 2 is stopped: %q", out)
	}
	out, code := c.smpc("status")
	if code != 1 || !strings.Contains(out, "2      down") {
		t.Errorf("status with OSlet 2 stopped: exit %d: %s", code, out)
	}
	// From the host, the spawn rides with the hello: it is in the stopped
	// init's socket when smpc run gives up, and must not run later. Its
	// descriptors stay there too, as above, so they are files here.
	errFile := filepath.Join(t.TempDir(), "hung.err")
	errOut, err := os.Create(errFile)
	if err != nil {
		t.Fatal(err)
	}
	hostRun := exec.Command(smpcBin, "--state-dir", c.dir, "run", "--on", "2", "--", "touch", "/gtmp/hung-ran")
	hostRun.Stdout, hostRun.Stderr = errOut, errOut
	err = hostRun.Run()
	errOut.Close()
	msg, _ := os.ReadFile(errFile)
	if code := hostRun.ProcessState.ExitCode(); code != 125 || !strings.Contains(string(msg), "oslet 2 is not answering") {
		t.Errorf("a spawn on the stopped OSlet 2 from the host: exit %d (%v): %s", code, err, msg)
	}
	syscall.Kill(init2, syscall.SIGCONT)
	waitFor(t, "OSlet 2 to answer again", func() bool {
		out, code := c.smpc("run", "--on", "1", "--", "smpc", "run", "--on", "2", "--", "echo", "back")
		return code == 0 && strings.TrimSpace(out) == "back"
	})
	if out, code := c.smpc("run", "--on", "2", "--", "ls", "/gtmp/hung-ran"); code == 0 {
		t.Errorf("the spawn given up on while OSlet 2 was stopped ran once it continued: %s", out)
	}
}
