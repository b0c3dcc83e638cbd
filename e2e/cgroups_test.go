package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Where a cluster's cgroups go (docs/cgroups.md): never below the cgroup of
// whoever booted it; in a systemd scope of its own where systemd runs a v2
// host; in the cgroup delegated to a service that boots it; at the top
// otherwise.

// placement is what the boot record says of where the cluster's cgroups are.
type placement struct {
	Kind, Dir, Top, Unit string
}

func (c *cluster) placement() placement {
	c.t.Helper()
	b, err := os.ReadFile(filepath.Join(c.dir, "cluster.json"))
	if err != nil {
		c.t.Fatal(err)
	}
	var st struct {
		Cgroup placement `json:"cgroup"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		c.t.Fatal(err)
	}
	return st.Cgroup
}

// unified reports whether the host runs cgroup v2 alone.
func unified() bool {
	var fs unix.Statfs_t
	return unix.Statfs("/sys/fs/cgroup", &fs) == nil && fs.Type == unix.CGROUP2_SUPER_MAGIC
}

// spawnedLeaf is where, below its OSlet's cgroup, a process that an init
// started runs (partition.SpawnedLeaf).
func spawnedLeaf() string {
	if unified() {
		return "/procs/spawned"
	}
	return "/procs"
}

func systemdRuns() bool {
	_, err := os.Stat("/run/systemd/system")
	return err == nil
}

// cgroupOf reads the cgroup of process pid: its v2 one, or on v1 its
// cgroup in the pids hierarchy.
func cgroupOf(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	return cgroupIn(string(b))
}

func cgroupIn(text string) string {
	want := ":pids:"
	if unified() {
		want = "0::"
	}
	for _, line := range strings.Split(text, "\n") {
		if i := strings.Index(line, want); i >= 0 && (want != "0::" || i == 0) {
			return line[i+len(want):]
		}
	}
	return ""
}

// hierarchyDir is where the cgroup path is, in the hierarchy that holds
// the controller (any on v2).
func hierarchyDir(controller, path string) string {
	if unified() {
		return filepath.Join("/sys/fs/cgroup", path)
	}
	return filepath.Join("/sys/fs/cgroup", controller, path)
}

// checkPlaced checks that each of the cluster's OSlets, from 1 to n, has
// its init and the processes it runs in its cgroup below p.Dir, and that
// the cgroup has the plan's limits.
func (c *cluster) checkPlaced(p placement, n int) {
	t := c.t
	t.Helper()
	st := c.state()
	for k := 1; k <= n; k++ {
		dir := fmt.Sprintf("%s/oslet-%d", p.Dir, k)
		if got := cgroupOf(t, st.Inits[strconv.Itoa(k)]); got != dir+"/init" {
			t.Errorf("oslet %d's init is in cgroup %q, want %q", k, got, dir+"/init")
		}
		out := c.must("run", "--on", strconv.Itoa(k), "--", "cat", "/proc/self/cgroup")
		if got := cgroupIn(out); got != dir+spawnedLeaf() {
			t.Errorf("a process run on oslet %d is in cgroup %q, want %q", k, got, dir+spawnedLeaf())
		}
		cpus, _ := os.ReadFile(filepath.Join(hierarchyDir("cpuset", dir), "cpuset.cpus"))
		memory := "memory.max"
		if !unified() {
			memory = "memory.limit_in_bytes"
		}
		mem, _ := os.ReadFile(filepath.Join(hierarchyDir("memory", dir), "procs", memory))
		pids, _ := os.ReadFile(filepath.Join(hierarchyDir("pids", dir), "procs", "pids.max"))
		if strings.TrimSpace(string(cpus)) == "" || strings.TrimSpace(string(mem)) == "max" || strings.TrimSpace(string(pids)) == "max" {
			t.Errorf("oslet %d's cgroup %s lacks its limits: cpuset.cpus %q, memory %q, pids.max %q", k, dir, cpus, mem, pids)
		}
	}
}

// checkRemoved checks that a cluster's cgroup is gone after its shutdown.
func checkRemoved(t *testing.T, p placement) {
	t.Helper()
	for _, controller := range []string{"pids", "memory", "cpuset"} {
		if _, err := os.Stat(hierarchyDir(controller, p.Dir)); err == nil {
			t.Errorf("cgroup %s left behind after shutdown", hierarchyDir(controller, p.Dir))
		}
	}
}

// makeCgroup makes a v2 cgroup for the test and removes it at the end,
// once the processes the test left in it are gone.
func makeCgroup(t *testing.T, path string) string {
	t.Helper()
	dir := filepath.Join("/sys/fs/cgroup", path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second * patience)
		for {
			var leaves []string
			filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
				if err == nil && info.IsDir() {
					leaves = append([]string{p}, leaves...)
				}
				return nil
			})
			for _, l := range leaves {
				os.Remove(l)
			}
			if _, err := os.Stat(dir); err != nil || time.Now().After(deadline) {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	return dir
}

// delegatedCgroup makes a v2 cgroup as systemd makes a delegated
// service's: marked with the trusted.delegate attribute.
func delegatedCgroup(t *testing.T, path string) string {
	t.Helper()
	dir := makeCgroup(t, path)
	if err := unix.Setxattr(dir, "trusted.delegate", []byte("1"), 0); err != nil {
		t.Skipf("this kernel keeps no trusted.delegate attribute on a cgroup (%v), which is how systemd marks delegation", err)
	}
	return dir
}

// TestCgroupsNotUnderCaller: smpc boot from a login session's cgroup, as
// sudo from an ssh login on a systemd host runs it
// (/user.slice/user-0.slice/session-N.scope, which holds processes), gets
// OSlets with their limits, in cgroups of the cluster's own, not below the
// session's; shutdown removes them.
func TestCgroupsNotUnderCaller(t *testing.T) {
	needRoot(t)
	var session string
	if unified() && !systemdRuns() {
		session = "/user.slice/user-0.slice/session-99.scope"
		makeCgroup(t, "/user.slice")
		makeCgroup(t, session)
	}
	c := bootIn(t, session, "--oslets", "2")
	p := c.placement()
	switch {
	case systemdRuns():
		if p.Kind != "systemd" {
			t.Fatalf("on a systemd host the cluster's cgroups are %+v, want a systemd scope", p)
		}
	case p.Kind != "top" || !strings.HasPrefix(p.Dir, "/smpc/"):
		t.Fatalf("the cluster's cgroups are %+v, want them below the top-level /smpc", p)
	}
	c.checkPlaced(p, 2)
	c.must("shutdown")
	checkRemoved(t, p)
}

// TestBootFromDelegatedCgroup: a service whose cgroup is delegated to it
// (systemd's Delegate=yes, which marks the cgroup with trusted.delegate)
// keeps the cluster in its own cgroup: its processes move into a leaf, the
// OSlets go beside it.
func TestBootFromDelegatedCgroup(t *testing.T) {
	needRoot(t)
	if !unified() {
		t.Skip("cgroup v1 host: delegation is a cgroup v2 matter (e2e/vm/run tests it)")
	}
	service := "/smpc-e2e-delegated.service"
	delegatedCgroup(t, service)
	c := bootIn(t, service, "--oslets", "2")
	p := c.placement()
	if p.Kind != "delegated" || !strings.HasPrefix(p.Dir, service+"/smpc-") {
		t.Fatalf("booted from a delegated cgroup, the cluster's cgroups are %+v, want them below %s", p, service)
	}
	if got := cgroupOf(t, c.state().Supervisor); got != service+"/supervisor" {
		t.Errorf("the boot process is in cgroup %q, want %s/supervisor", got, service)
	}
	c.checkPlaced(p, 2)
	c.must("shutdown")
	checkRemoved(t, p)
}

// TestBootRefusesWithoutControllers: where the host gives the cluster no
// cpuset controller, boot says so in one line with what to do, and leaves
// nothing behind.
func TestBootRefusesWithoutControllers(t *testing.T) {
	needRoot(t)
	if !unified() {
		t.Skip("cgroup v1 host: every controller is its own hierarchy, always there (e2e/vm/run tests v2)")
	}
	if systemdRuns() {
		t.Skip("systemd owns the root cgroup's controllers here; e2e/vm/run without --systemd tests this")
	}
	parent := makeCgroup(t, "/smpc-e2e-nocpuset")
	if err := os.WriteFile(filepath.Join(parent, "cgroup.subtree_control"), []byte("+cpu +memory +pids"), 0); err != nil {
		t.Fatal(err)
	}
	service := "/smpc-e2e-nocpuset/svc.service"
	dir := delegatedCgroup(t, service)
	stateDir := "/run/smpc-e2e-nocpuset"
	cmd := exec.Command(smpcBin, "--state-dir", stateDir, "boot", "--detach", "--oslets", "2")
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	cmd.SysProcAttr = &unix.SysProcAttr{UseCgroupFD: true, CgroupFD: int(d.Fd())}
	out, code := run(cmd)
	if code == 0 {
		exec.Command(smpcBin, "--state-dir", stateDir, "shutdown").Run()
		t.Fatalf("boot without a cpuset controller succeeded: %s", out)
	}
	if !strings.Contains(out, "does not offer the cpuset controller ") || !strings.Contains(out, "Delegate=yes") || strings.Count(strings.TrimSpace(out), "\n") > 0 {
		t.Errorf("boot without a cpuset controller said (exit %d):\n%s\nwant one line naming the controller and how to delegate it", code, out)
	}
	if entries, _ := os.ReadDir(stateDir); len(entries) > 0 {
		t.Errorf("a refused boot left %d files in %s", len(entries), stateDir)
	}
	if entries, _ := filepath.Glob(filepath.Join(dir, "smpc-*")); len(entries) > 0 {
		t.Errorf("a refused boot left cgroups: %v", entries)
	}
	os.Remove(stateDir)
}

// TestBootUnderSystemd: on a host that systemd runs, the cluster is a
// transient scope of systemd's, delegated to smpc, which holds the
// cluster's PID 1, the inits and the OSlets' cgroups; shutdown stops it.
// On cgroup v1 (a hybrid host) systemd manages no cpuset: smpc makes the
// scope's path there, and removes it.
func TestBootUnderSystemd(t *testing.T) {
	needRoot(t)
	if !systemdRuns() {
		t.Skip("no systemd here (e2e/vm/run --systemd boots one)")
	}
	_, slicedBefore := os.Stat("/sys/fs/cgroup/cpuset/system.slice")
	c := boot(t, "--oslets", "2")
	p := c.placement()
	if p.Kind != "systemd" || !strings.HasPrefix(p.Unit, "smpc-") || !strings.HasSuffix(p.Dir, "/"+p.Unit) {
		t.Fatalf("the cluster's cgroups are %+v, want a systemd scope", p)
	}
	show := func() string {
		out, _ := exec.Command("systemctl", "show", "-p", "LoadState,ActiveState,Delegate", p.Unit).CombinedOutput()
		return string(out)
	}
	if got := show(); !strings.Contains(got, "ActiveState=active") || !strings.Contains(got, "Delegate=yes") {
		t.Errorf("systemctl show %s:\n%s\nwant an active, delegated scope", p.Unit, got)
	}
	st := c.state()
	if unified() {
		if got := cgroupOf(t, st.Reaper); got != p.Dir+"/reaper" {
			t.Errorf("the cluster's PID 1 is in cgroup %q, want %s/reaper", got, p.Dir)
		}
	} else {
		// systemd knows a unit's processes by its own hierarchy.
		for what, pid := range map[string]int{"the cluster's PID 1": st.Reaper, "oslet 1's init": st.Inits["1"], "oslet 2's init": st.Inits["2"]} {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
			if !strings.Contains(string(b), ":name=systemd:"+p.Dir+"\n") {
				t.Errorf("%s is not in the scope in systemd's hierarchy:\n%s", what, b)
			}
		}
	}
	c.checkPlaced(p, 2)
	c.must("shutdown")
	if got := show(); !strings.Contains(got, "LoadState=not-found") {
		t.Errorf("after shutdown, systemctl show %s:\n%s\nwant the scope gone", p.Unit, got)
	}
	checkRemoved(t, p)
	if _, err := os.Stat("/sys/fs/cgroup/cpuset/system.slice"); err == nil && slicedBefore != nil {
		t.Error("the cpuset hierarchy's system.slice, which smpc made, is left after shutdown")
	}
}

// TestSystemdService: the unit that docs/smpc.service ships boots a
// cluster with the service (Type=notify: started once it is up) in the
// service's own cgroup (on cgroup v2; a scope beside it on v1), and stops
// it with the service.
func TestSystemdService(t *testing.T) {
	needRoot(t)
	if !systemdRuns() {
		t.Skip("no systemd here (e2e/vm/run --systemd boots one)")
	}
	unit, err := os.ReadFile("../docs/smpc.service")
	if err != nil {
		t.Fatal(err)
	}
	stateDir := "/run/smpc-e2e-service"
	text := strings.ReplaceAll(string(unit), "/usr/local/bin/smpc", smpcBin)
	text = strings.ReplaceAll(text, "--state-dir /run/smpc", "--state-dir "+stateDir)
	text = strings.Replace(text, "boot --state-dir", "boot --oslets 2 --state-dir", 1)
	path := "/run/systemd/system/smpc-e2e.service"
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	systemctl := func(args ...string) string {
		out, err := exec.Command("systemctl", args...).CombinedOutput()
		if err != nil {
			t.Errorf("systemctl %v: %v: %s", args, err, out)
		}
		return string(out)
	}
	t.Cleanup(func() {
		exec.Command("systemctl", "stop", "smpc-e2e.service").Run()
		os.Remove(path)
		exec.Command("systemctl", "daemon-reload").Run()
	})
	systemctl("daemon-reload")
	start := time.Now()
	systemctl("start", "smpc-e2e.service")
	t.Logf("systemctl start: %v", time.Since(start))
	c := &cluster{t: t, dir: stateDir}
	p := c.placement()
	switch {
	case !unified():
		// cgroup v1 knows no delegation of a service's own cgroup: the
		// cluster is a scope beside the service.
		if p.Kind != "systemd" {
			t.Fatalf("the service's cluster's cgroups are %+v, want a systemd scope", p)
		}
	case p.Kind != "delegated" || !strings.HasPrefix(p.Dir, "/system.slice/smpc-e2e.service/smpc-"):
		t.Fatalf("the service's cluster's cgroups are %+v, want them in the service's cgroup", p)
	}
	c.checkPlaced(p, 2)
	start = time.Now()
	systemctl("stop", "smpc-e2e.service")
	t.Logf("systemctl stop: %v", time.Since(start))
	if out, code := c.smpc("status"); code == 0 || !strings.Contains(out, "no cluster is running") {
		t.Errorf("status after systemctl stop: exit %d: %s", code, out)
	}
	checkRemoved(t, p)
}

// TestFourOSlets: a cluster of four OSlets, where the machine has the CPUs
// for it (e2e/vm/run's guest has four, in two NUMA nodes): each runs
// processes on CPUs of its own, every OSlet sees and signals every other's
// with the system's own ps and kill, a pipe crosses all four, one OSlet's
// death ends its processes alone, and shutdown leaves nothing.
func TestFourOSlets(t *testing.T) {
	needRoot(t)
	if runtime.NumCPU() < 4 {
		t.Skipf("%d CPUs here: four OSlets need four (e2e/vm/run's guest has them)", runtime.NumCPU())
	}
	c := boot(t, "--oslets", "4")
	st := c.state()
	if status := c.must("status"); strings.Count(status, " up ") != 4 {
		t.Fatalf("status of a 4-OSlet cluster:\n%s", status)
	}
	sleepers := map[int]string{}
	cpus := map[string]int{}
	for k := 1; k <= 4; k++ {
		on := strconv.Itoa(k)
		out := c.must("run", "--on", on, "--", "sh", "-c", `echo $SMPC_OSLET $(grep Cpus_allowed_list /proc/self/status | cut -f2)`)
		f := strings.Fields(out)
		if len(f) != 2 || f[0] != on {
			t.Errorf("a process on OSlet %d says %q", k, out)
		} else if other, seen := cpus[f[1]]; seen {
			t.Errorf("OSlets %d and %d run on the same CPUs %s", other, k, f[1])
		} else {
			cpus[f[1]] = k
		}
		sleepers[k] = strings.TrimSpace(c.must("run", "--detach", "--on", on, "--", "sleep", "600"))
	}
	for k := 1; k <= 4; k++ {
		out := c.must("run", "--on", strconv.Itoa(k), "--", "ps", "-e", "-o", "pid=")
		for j, pid := range sleepers {
			if !slices.Contains(strings.Fields(out), pid) {
				t.Errorf("ps -e on OSlet %d does not show OSlet %d's sleep %s", k, j, pid)
			}
		}
	}
	// The shell's own kill, from OSlet 1 to OSlet 4; the host waits.
	c.must("run", "--on", "1", "--", "sh", "-c", "kill -USR1 "+sleepers[4])
	if out, code := c.smpc("wait", sleepers[4]); code != 138 {
		t.Errorf("wait for OSlet 4's sleep after OSlet 1's kill -USR1: exit %d: %s", code, out)
	}
	smpcOn := func(k int) string {
		return fmt.Sprintf("%s --state-dir %s run --on %d -- ", smpcBin, c.dir, k)
	}
	pipe := exec.Command("sh", "-c", smpcOn(1)+"seq 1 20000 | "+smpcOn(2)+"cat | "+smpcOn(3)+"cat | "+smpcOn(4)+"wc -l")
	pipe.Dir = "/" // a directory every OSlet sees, wherever the test runs
	if out, code := run(pipe); code != 0 || strings.TrimSpace(out) != "20000" {
		t.Errorf("a pipe through four OSlets: exit %d: %q", code, out)
	}
	// OSlet 3 fails: its sleep ends, the others' run on.
	if err := unix.Kill(st.Inits["3"], unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "OSlet 3 to be seen down", func() bool {
		out, _ := c.smpc("status")
		return strings.Count(out, " down") == 1 && strings.Count(out, " up ") == 3
	})
	if _, code := c.smpc("wait", sleepers[3]); code != 137 {
		t.Errorf("wait for the dead OSlet 3's sleep: exit %d, want 137", code)
	}
	for _, k := range []int{1, 2} {
		if _, code := c.smpc("run", "--on", "4", "--", "kill", "-0", sleepers[k]); code != 0 {
			t.Errorf("OSlet %d's sleep is gone after OSlet 3 died", k)
		}
	}
	c.must("shutdown")
	c.checkLeftNothing(st)
}

// TestBootInContainer: smpc boot from a shell in a container with a
// cgroup namespace of its own (the root it sees holds the container's
// processes): the container's processes move into a leaf, as
// docker-in-docker's entry point moves them, and the cluster's cgroups go
// beside it, with their limits.
func TestBootInContainer(t *testing.T) {
	needRoot(t)
	if !unified() || systemdRuns() {
		t.Skip("a container's cgroup namespace on a cgroup v2 host without systemd: e2e/vm/run tests it")
	}
	// What a container runtime does: the controllers reach the
	// container's cgroup.
	if err := os.WriteFile("/sys/fs/cgroup/cgroup.subtree_control", []byte("+cpu +cpuset +memory +pids"), 0); err != nil {
		t.Fatal(err)
	}
	const container = "/smpc-e2e-container"
	dir := makeCgroup(t, container)
	shell := startContainer(t, dir, "rw")
	// smpc enters the container from a session's cgroup on the host, so
	// that its own cgroup lies outside the container's namespace (which
	// shows it as "/../smpc-e2e-admin").
	c := &cluster{t: t, dir: "/run/smpc-e2e-container", in: shell, from: makeCgroup(t, "/smpc-e2e-admin")}
	c.smpc("shutdown")
	if out, code := c.smpc("boot", "--detach", "--oslets", "2"); code != 0 {
		t.Fatalf("boot in a container: exit %d: %s", code, out)
	}
	defer c.smpc("shutdown")
	p := c.placement()
	if p.Kind != "delegated" || !strings.HasPrefix(p.Dir, "/smpc-") {
		t.Fatalf("booted in a container, the cluster's cgroups are %+v, want them at the root of its namespace", p)
	}
	if got := cgroupOf(t, shell); got != container+"/supervisor" {
		t.Errorf("the container's process is in cgroup %q, want %s/supervisor", got, container)
	}
	st := c.state()
	for k := 1; k <= 2; k++ {
		osletDir := fmt.Sprintf("%s/oslet-%d", p.Dir, k)
		if got := cgroupOf(t, st.Inits[strconv.Itoa(k)]); got != container+osletDir+"/init" {
			t.Errorf("oslet %d's init is in cgroup %q, want %q", k, got, container+osletDir+"/init")
		}
		if got := cgroupIn(c.must("run", "--on", strconv.Itoa(k), "--", "cat", "/proc/self/cgroup")); got != osletDir+spawnedLeaf() {
			t.Errorf("a process on oslet %d sees itself in cgroup %q, want %q", k, got, osletDir+spawnedLeaf())
		}
		if mem, _ := os.ReadFile(filepath.Join(dir, osletDir, "procs", "memory.max")); len(mem) == 0 || string(mem) == "max\n" {
			t.Errorf("oslet %d's processes have no memory limit: %q", k, mem)
		}
	}
	c.must("shutdown")
	if _, err := os.Stat(filepath.Join(dir, p.Dir)); err == nil {
		t.Errorf("cgroup %s left behind", filepath.Join(dir, p.Dir))
	}

	// A container whose cgroup file system is read-only: one line says so.
	ro := &cluster{t: t, dir: "/run/smpc-e2e-container-ro", in: startContainer(t, makeCgroup(t, container+"-ro"), "ro")}
	out, code := ro.smpc("boot", "--detach", "--oslets", "2")
	if code == 0 {
		ro.smpc("shutdown")
		t.Fatalf("boot on a read-only cgroup file system succeeded: %s", out)
	}
	if !strings.Contains(out, "cgroup file system is read-only") || strings.Count(strings.TrimSpace(out), "\n") > 0 {
		t.Errorf("boot on a read-only cgroup file system said (exit %d):\n%s\nwant one line saying so", code, out)
	}
	if entries, _ := os.ReadDir(ro.dir); len(entries) > 0 {
		t.Errorf("a refused boot left %d files in %s", len(entries), ro.dir)
	}
	os.Remove(ro.dir)
}

// startContainer starts a stand-in for a container's shell in the v2
// cgroup dir: its own cgroup and mount namespaces, the cgroup file system
// mounted again (with options opts) to show its own root, and a process
// that stays until the test ends. It returns that process's PID.
func startContainer(t *testing.T, dir, opts string) int {
	t.Helper()
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	shell := exec.Command("unshare", "--cgroup", "--mount", "--propagation", "private", "sh", "-c",
		"umount -l /sys/fs/cgroup && mount -t cgroup2 -o "+opts+" container /sys/fs/cgroup && echo ready && exec sleep 600")
	shell.SysProcAttr = &unix.SysProcAttr{UseCgroupFD: true, CgroupFD: int(d.Fd())}
	out, err := shell.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	shell.Stderr = &stderr
	if err := shell.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shell.Process.Kill(); shell.Wait() })
	if line, _ := bufio.NewReader(out).ReadString('\n'); line != "ready\n" {
		t.Fatalf("the container did not start: %s", stderr.String())
	}
	return shell.Process.Pid
}
