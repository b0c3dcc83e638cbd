package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// These tests use only unmodified programs inside the OSlets (bash, procps,
// util-linux, python3, make): the cluster must look like one machine to
// them, with nothing of smpc's in between.

// TestOneProcessSpace checks that every OSlet sees and signals every
// OSlet's processes by the same PIDs that smpc prints on the host.
func TestOneProcessSpace(t *testing.T) {
	c := boot(t, "--oslets", "2")
	start := func(k int, args ...string) string {
		pid := strings.TrimSpace(c.must(append([]string{"run", "--detach", "--on", strconv.Itoa(k), "--"}, args...)...))
		if p, ok := c.find(pid); !ok || p.OSlet != k {
			t.Fatalf("ps shows %s as %+v, %v; want it on OSlet %d", pid, p, ok, k)
		}
		return pid
	}
	on1 := func(script string) (string, int) {
		return c.smpc("run", "--on", "1", "--", "bash", "-c", script)
	}

	// ps, pgrep and /proc inside OSlet 1 list OSlet 2's process.
	sleeper := start(2, "sleep", "1001")
	if out, code := on1("ps -e -o pid=,args= | grep -w 'sleep 1001' | grep -v grep"); code != 0 || !strings.HasPrefix(strings.TrimSpace(out), sleeper+" ") {
		t.Errorf("ps -e on OSlet 1 for OSlet 2's sleep (PID %s): %d %q", sleeper, code, out)
	}
	if out, code := on1("pgrep -f 'sleep 1001'"); code != 0 || strings.TrimSpace(out) != sleeper {
		t.Errorf("pgrep on OSlet 1: %d %q, want %s", code, out, sleeper)
	}
	if out, code := on1("cat /proc/" + sleeper + "/cmdline | tr '\\0' ' '"); code != 0 || strings.TrimSpace(out) != "sleep 1001" {
		t.Errorf("/proc/%s on OSlet 1: %d %q", sleeper, code, out)
	}

	// Every way a program signals, from OSlet 1 to OSlet 2; smpc wait on the
	// host sees the signal by the same number.
	for n, way := range []struct {
		name, sig string
		script    func(pid, arg string) string
	}{
		{"bash's kill builtin", "SIGUSR1", func(pid, _ string) string { return "kill -USR1 " + pid }},
		{"/bin/kill", "SIGUSR2", func(pid, _ string) string { return "/bin/kill -USR2 " + pid }},
		{"python's os.kill", "SIGTERM", func(pid, _ string) string {
			return "python3 -c 'import os, signal; os.kill(" + pid + ", signal.SIGTERM)'"
		}},
		{"pkill -f", "SIGHUP", func(_, arg string) string { return "pkill -HUP -f '^sleep " + arg + "$'" }},
	} {
		arg := strconv.Itoa(1002 + n)
		pid := start(2, "sleep", arg)
		if out, code := on1(way.script(pid, arg)); code != 0 {
			t.Errorf("%s from OSlet 1: %d %s", way.name, code, out)
			continue
		}
		if out, _ := c.smpc("wait", pid); !strings.Contains(out, way.sig) {
			t.Errorf("%s: smpc wait %s says %q, want %s", way.name, pid, out, way.sig)
		}
	}

	// The kernel's own rule decides who may signal whom, across OSlets too.
	victim := start(2, "sleep", "1009")
	nobody := "setpriv --reuid 65534 --regid 65534 --clear-groups "
	if out, code := on1(nobody + "kill " + victim); code == 0 || !strings.Contains(out, "Operation not permitted") {
		t.Errorf("nobody on OSlet 1 killing root's process on OSlet 2: %d %q", code, out)
	}
	c.must("kill", victim)

	// kill -0 of a PID that nobody has fails as on Linux; smpc says so too.
	if out, code := on1("kill -0 4000000"); code != 1 || !strings.Contains(out, "No such process") {
		t.Errorf("kill -0 of no process: %d %q", code, out)
	}
	if out, code := c.smpc("kill", "4000000"); code == 0 || !strings.Contains(out, "no such process") {
		t.Errorf("smpc kill of no process: %d %q", code, out)
	}

	// A PID lock file names a daemon on OSlet 1; a second copy on OSlet 2
	// finds it alive and backs off, as on one machine.
	lock := filepath.Join(c.dir, "gtmp", "daemon.pid")
	daemon := "if [ -f /gtmp/daemon.pid ] && kill -0 $(cat /gtmp/daemon.pid) 2>/dev/null; then echo held by $(cat /gtmp/daemon.pid); exit 1; fi; echo $$ > /gtmp/daemon.pid; exec sleep 1010"
	holder := start(1, "bash", "-c", daemon)
	waitFor(t, "the daemon's lock file", func() bool {
		b, _ := os.ReadFile(lock)
		return strings.TrimSpace(string(b)) == holder
	})
	if out, code := c.smpc("run", "--on", "2", "--", "bash", "-c", daemon); code != 1 || strings.TrimSpace(out) != "held by "+holder {
		t.Errorf("a second daemon on OSlet 2: %d %q, want it to see the lock held by %s", code, out, holder)
	}
	c.must("kill", holder)
	c.must("kill", sleeper)

	// wait(2) for one's own children still works, wherever they are.
	if out, code := on1("sleep 0.1 & wait $!; echo $?"); code != 0 || strings.TrimSpace(out) != "0" {
		t.Errorf("a shell's wait on OSlet 1: %d %q", code, out)
	}
	// smpc itself is found by name inside every OSlet, though the host's
	// PATH does not hold it.
	if out, code := c.smpc("run", "--on", "1", "--", "smpc", "run", "--on", "2", "--", "sh", "-c", "echo $SMPC_OSLET"); code != 0 || strings.TrimSpace(out) != "2" {
		t.Errorf("smpc by name inside OSlet 1: %d %q", code, out)
	}
}

// TestSysVFromUnmodifiedPrograms checks that a queue, a semaphore set and a
// shared memory segment made through libc on OSlet 1 are the ones libc
// finds on OSlet 2, that util-linux ipcs lists them there, and that smpc
// ipcs on the host names their creator's OSlet.
func TestSysVFromUnmodifiedPrograms(t *testing.T) {
	c := boot(t, "--oslets", "2")
	c.shareScript("sysv.py")
	py := func(k int, args ...string) (string, int) {
		return c.smpc(append([]string{"run", "--on", strconv.Itoa(k), "--", "python3", "/gtmp/sysv.py"}, args...)...)
	}
	creator := strings.TrimSpace(c.must("run", "--detach", "--on", "1", "--", "python3", "/gtmp/sysv.py", "create", "0x5a5a"))
	waitFor(t, "the objects to exist", func() bool { return len(c.ipcs()) == 3 })

	if out, code := c.smpc("run", "--on", "2", "--", "ipcs"); code != 0 || strings.Count(out, "0x00005a5a") != 3 {
		t.Errorf("util-linux ipcs on OSlet 2: %d\n%s", code, out)
	}
	for _, o := range c.ipcs() {
		if o.Kind == "shm" && o.OSlet != 1 {
			t.Errorf("smpc ipcs names OSlet %d for the segment made on OSlet 1: %+v", o.OSlet, o)
		}
	}
	if out := c.must("ipcs", "-m"); !regexp.MustCompile(`0x00005a5a\s+\d+\s+root\s+600\s+4096\s+1\s+1\n`).MatchString(out) {
		t.Errorf("smpc ipcs -m does not show the segment attached once, on OSlet 1:\n%s", out)
	}
	if out, code := py(2, "recv", "0x5a5a"); code != 0 || strings.TrimSpace(out) != "made on oslet 1" {
		t.Errorf("the message, read on OSlet 2: %d %q", code, out)
	}

	// The semaphore as a mutex around the segment's counter, from both
	// OSlets at once: no update may be lost.
	const rounds = 3000
	var wg sync.WaitGroup
	for _, k := range []int{1, 2, 2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if out, code := py(k, "count", "0x5a5a", strconv.Itoa(rounds)); code != 0 || !strings.Contains(out, "counted") {
				t.Errorf("counter on OSlet %d: %d %s", k, code, out)
			}
		}()
	}
	wg.Wait()
	if out, code := py(1, "read", "0x5a5a"); code != 0 || strings.TrimSpace(out) != strconv.Itoa(3*rounds) {
		t.Errorf("counter after 3 x %d rounds: %d %q", rounds, code, out)
	}
	c.must("kill", creator)
	c.must("ipcrm", "-Q", "0x5a5a", "-S", "0x5a5a", "-M", "0x5a5a")
	if objs := c.ipcs(); len(objs) != 0 {
		t.Errorf("ipcs after ipcrm: %+v", objs)
	}
}

// spreadMakefile has n independent recipes that each record the cgroup they
// ran in; nothing in it knows of smpc.
func spreadMakefile(t *testing.T, dir string, n int) {
	t.Helper()
	var b strings.Builder
	b.WriteString("N := $(shell seq 1 " + strconv.Itoa(n) + ")\nall: $(addprefix out/,$(N))\nout/%:\n")
	b.WriteString("\t@mkdir -p out; i=0; while [ $$i -lt 200000 ]; do i=$$((i+1)); done; grep -m1 oslet /proc/self/cgroup > $@\n")
	if err := os.WriteFile(filepath.Join(dir, "Makefile"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// recipeOSlets reads where the recipes ran.
func recipeOSlets(t *testing.T, dir string) map[string]int {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "out", "*"))
	seen := map[string]int{}
	for _, f := range files {
		b, _ := os.ReadFile(f)
		if m := regexp.MustCompile(`oslet-(\d+)`).FindStringSubmatch(string(b)); m != nil {
			seen[m[1]]++
		}
	}
	return seen
}

// TestMakeSpreads checks the seed's inherited launch attribute: under a
// spreading policy an unmodified make's recipes run on every OSlet; with the
// default policy, all on one.
func TestMakeSpreads(t *testing.T) {
	c := boot(t, "--oslets", "2")
	dir := t.TempDir()
	spreadMakefile(t, dir, 16)
	make := func(args ...string) (string, int) {
		cmd := exec.Command(smpcBin, append([]string{"--state-dir", c.dir, "run"}, args...)...)
		cmd.Dir = dir
		os.RemoveAll(filepath.Join(dir, "out"))
		return run(cmd)
	}
	if out, code := make("--policy", "least-loaded", "--", "make", "-j4"); code != 0 {
		t.Fatalf("make under least-loaded: %d %s", code, out)
	}
	if seen := recipeOSlets(t, dir); len(seen) != 2 || seen["1"]+seen["2"] != 16 {
		t.Errorf("16 recipes under least-loaded ran on %v, want both OSlets", seen)
	}
	if out, code := make("--on", "2", "--", "make", "-j4"); code != 0 {
		t.Fatalf("make with the default policy: %d %s", code, out)
	}
	if seen := recipeOSlets(t, dir); len(seen) != 1 || seen["2"] != 16 {
		t.Errorf("16 recipes with the default policy ran on %v, want all on OSlet 2", seen)
	}
	if out, code := make("--policy", "round-robin", "--", "make", "-j4"); code != 0 {
		t.Fatalf("make under round-robin: %d %s", code, out)
	}
	if seen := recipeOSlets(t, dir); len(seen) != 2 {
		t.Errorf("16 recipes under round-robin ran on %v, want both OSlets", seen)
	}

	// ps names the policy of the processes it placed.
	sleeper := strings.TrimSpace(c.must("run", "--detach", "--policy", "round-robin", "--", "sh", "-c", "sleep 1020; true"))
	waitFor(t, "the spread sleep", func() bool {
		for _, p := range c.ps() {
			if p.Cmd == "sleep 1020" && p.Policy == "round-robin" {
				return true
			}
		}
		return false
	})
	c.must("kill", "--", "-"+sleeper)

	// A failing Makefile fails the same way; a bad policy is refused.
	os.WriteFile(filepath.Join(dir, "Makefile"), []byte("all:\n\t@false\n"), 0o644)
	if out, code := make("--policy", "least-loaded", "--", "make"); code != 2 || !strings.Contains(out, "Error 1") {
		t.Errorf("a failing make under least-loaded: %d %s", code, out)
	}
	if out, code := make("--policy", "nearest", "--", "make"); code == 0 || !strings.Contains(out, "unknown launch policy") {
		t.Errorf("an unknown policy: %d %s", code, out)
	}
}

// placedExecScript is a python3 program that fills 32 MiB, runs five
// children that print their cgroup, and after each prints how many of its
// own anonymous pages lie on memory nodes its cpuset does not allow:
// "CGROUP AWAY".
// Python's subprocess starts children with vfork, so a child shares its
// parent's memory until it executes its program.
const placedExecScript = `
import os, re, subprocess
allowed = set()
status = open("/proc/self/status").read()
for part in re.search(r"Mems_allowed_list:\s*(\S+)", status).group(1).split(","):
    a, _, b = part.partition("-")
    allowed.update(range(int(a), int(b or a) + 1))
data = b"x" * (32 << 20)
def away():
    n = 0
    for line in open("/proc/self/numa_maps"):
        if " file=" in line:
            continue  # the page cache's, shared with every process
        for node, pages in re.findall(r" N(\d+)=(\d+)", line):
            if int(node) not in allowed:
                n += int(pages)
    return n
def cgroup(text):
    lines = text.strip().split("\n")
    pids = [l for l in lines if ":pids:" in l]  # cgroup v1
    return (pids or lines)[-1].split(":")[-1]
print("parent", cgroup(open("/proc/self/cgroup").read()))
for i in range(5):
    out = subprocess.run(["cat", "/proc/self/cgroup"], capture_output=True, text=True, check=True).stdout
    print(cgroup(out), away())
`

// TestPlacedExecLeavesParentMemory checks that placing a program at its
// exec moves none of its parent's memory. cgroup v2's cpuset migrates a
// process's pages when it moves to other memory nodes, and a vfork child
// shares its parent's: a spreading make would drag its memory from node to
// node with every recipe. It needs two memory nodes (e2e/vm/run's guest
// has them).
func TestPlacedExecLeavesParentMemory(t *testing.T) {
	if _, err := os.Stat("/sys/devices/system/node/node1"); err != nil {
		t.Skip("needs two NUMA nodes, one per OSlet; e2e/vm/run's guest has them")
	}
	c := boot(t, "--oslets", "2")
	out := c.must("run", "--policy", "round-robin", "--", "python3", "-c", placedExecScript)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 6 || !strings.HasPrefix(lines[0], "parent ") {
		t.Fatalf("the placing program printed:\n%s", out)
	}
	parent := strings.TrimPrefix(lines[0], "parent ")
	osletOf := regexp.MustCompile(`/oslet-\d+/`).FindString
	moved := 0
	for _, line := range lines[1:] {
		cgroup, away, _ := strings.Cut(line, " ")
		if away != "0" {
			t.Errorf("after a child ran in %s, %s of the parent's pages (in %s) lay on nodes its cpuset does not allow", cgroup, away, parent)
		}
		if osletOf(cgroup) != osletOf(parent) {
			moved++
			if unified() && path.Base(cgroup) != "placed" {
				t.Errorf("a program placed at its exec runs in %s, want the OSlet's placed leaf", cgroup)
			}
		}
	}
	if moved == 0 {
		t.Errorf("no child of %s was placed on the other OSlet:\n%s", parent, out)
	}
}

// TestJobserverAcrossOSlets checks that a make's jobserver pipe reaches a
// sub-make on another OSlet: every descriptor the caller leaves open across
// exec is handed over at its own number.
func TestJobserverAcrossOSlets(t *testing.T) {
	c := boot(t, "--oslets", "2")
	dir := t.TempDir()
	sub := filepath.Join(dir, "sub")
	os.MkdirAll(sub, 0o755)
	spreadMakefile(t, sub, 4)
	top := fmt.Sprintf("all:\n\t+@%s --state-dir %s run --on 2 -- $(MAKE) -C sub\n", smpcBin, c.dir)
	os.WriteFile(filepath.Join(dir, "Makefile"), []byte(top), 0o644)
	cmd := exec.Command("make", "-j4")
	cmd.Dir = dir
	out, code := run(cmd)
	if code != 0 || strings.Contains(out, "jobserver unavailable") {
		t.Errorf("a sub-make on OSlet 2 under make -j4: %d %s", code, out)
	}
	if seen := recipeOSlets(t, sub); seen["2"] != 4 {
		t.Errorf("the sub-make's recipes ran on %v", seen)
	}
	// And the descriptors themselves: a process on another OSlet holds
	// what a local exec in the same place would.
	sh := exec.Command("bash", "-c", fmt.Sprintf("exec 7</dev/null 9>/dev/null; ls /proc/self/fd; echo --; %s --state-dir %s run --on 2 -- ls /proc/self/fd", smpcBin, c.dir))
	out, code = run(sh)
	local, remote, _ := strings.Cut(out, "--\n")
	if code != 0 || strings.Join(strings.Fields(local), " ") != strings.Join(strings.Fields(remote), " ") || !strings.Contains(remote, "7\n9\n") {
		t.Errorf("descriptors of a process on OSlet 2: %d\n%s\nwant those of a local exec, 7 and 9 among them", code, out)
	}

	// The same under a spreading policy, whose start-up needs a socket of
	// its own: a recursive make with the jobserver's descriptors.
	os.RemoveAll(filepath.Join(sub, "out"))
	top = fmt.Sprintf("all:\n\t+@%s --state-dir %s run --policy least-loaded -- $(MAKE) -C sub\n", smpcBin, c.dir)
	os.WriteFile(filepath.Join(dir, "Makefile"), []byte(top), 0o644)
	cmd = exec.Command("make", "-j4")
	cmd.Dir = dir
	if out, code := run(cmd); code != 0 || strings.Contains(out, "jobserver unavailable") {
		t.Errorf("a sub-make under least-loaded with the jobserver's descriptors: %d %s", code, out)
	}
	if seen := recipeOSlets(t, sub); seen["1"]+seen["2"] != 4 {
		t.Errorf("the sub-make's recipes under least-loaded: %v", seen)
	}
}

// postgresBin finds Debian's PostgreSQL server programs.
func postgresBin(t *testing.T) string {
	t.Helper()
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
			return d
		}
	}
	t.Skip("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
	return ""
}

// TestPostgresAcrossOSlets runs a real database on OSlet 2 and manages it
// from OSlet 1 as its own tools do on one machine: pg_ctl reads the PID in
// postmaster.pid and signals it, a second postmaster sees the lock held,
// psql connects through a socket in /gtmp, and the server's System V
// shared memory segment shows under its OSlet.
func TestPostgresAcrossOSlets(t *testing.T) {
	bin := postgresBin(t)
	c := boot(t, "--oslets", "2")
	if _, err := user.Lookup("postgres"); err != nil {
		t.Skip("no postgres user (.ci/run installs Debian's postgresql)")
	}
	data, err := os.MkdirTemp("/var/tmp", "smpc-e2e-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(data) })
	if out, err := exec.Command("chown", "postgres:", data).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v: %s", err, out)
	}
	asPostgres := []string{"setpriv", "--reuid", "postgres", "--regid", "postgres", "--init-groups"}
	if out, code := run(exec.Command(asPostgres[0], append(asPostgres[1:], filepath.Join(bin, "initdb"), "-D", data)...)); code != 0 {
		t.Fatalf("initdb: %d %s", code, out)
	}
	on := func(k int, args ...string) (string, int) {
		return c.smpc(append(append([]string{"run", "--on", strconv.Itoa(k), "--"}, asPostgres...), args...)...)
	}
	server := []string{filepath.Join(bin, "postgres"), "-D", data, "-k", "/gtmp", "-c", "listen_addresses="}
	pid := strings.TrimSpace(c.must(append(append([]string{"run", "--detach", "--on", "2", "--"}, asPostgres...), server...)...))
	t.Cleanup(func() { c.smpc("kill", "-KILL", pid) })
	waitFor(t, "the server to take connections", func() bool {
		_, code := on(1, "pg_isready", "-h", "/gtmp")
		return code == 0
	})
	if out, code := on(1, filepath.Join(bin, "pg_ctl"), "-D", data, "status"); code != 0 || !strings.Contains(out, "server is running (PID: "+pid+")") {
		t.Errorf("pg_ctl status on OSlet 1: %d %s", code, out)
	}
	if out, code := on(1, "psql", "-h", "/gtmp", "-d", "postgres", "-Atc", "create table t(x int); insert into t select generate_series(1, 1000); select sum(x) from t"); code != 0 || !strings.Contains(out, "500500") {
		t.Errorf("psql on OSlet 1: %d %s", code, out)
	}
	if out, code := on(1, server...); code == 0 || !strings.Contains(out, "Is another postmaster (PID "+pid+") running") {
		t.Errorf("a second postmaster on OSlet 1 for the same data: %d %s", code, out)
	}
	if out := c.must("ipcs", "-m"); !regexp.MustCompile(`postgres\s+600\s+\d+\s+\d+\s+2\n`).MatchString(out) {
		t.Errorf("smpc ipcs -m does not show the server's segment on OSlet 2:\n%s", out)
	}
	if out, code := on(1, filepath.Join(bin, "pg_ctl"), "-D", data, "stop"); code != 0 || !strings.Contains(out, "server stopped") {
		t.Errorf("pg_ctl stop on OSlet 1: %d %s", code, out)
	}
	if out, _ := c.smpc("wait", pid); !strings.Contains(out, "exited with status 0") {
		t.Errorf("the server after pg_ctl stop: %s", out)
	}
}
