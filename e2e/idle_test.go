package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// contextSwitches sums the voluntary and involuntary context switches of
// every thread of process pid: a process that sleeps makes none, and
// reading them wakes nothing.
func contextSwitches(t *testing.T, pid int) int {
	t.Helper()
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if err != nil || len(tasks) == 0 {
		t.Fatalf("process %d: no tasks (%v)", pid, err)
	}
	total := 0
	for _, task := range tasks {
		b, err := os.ReadFile(task)
		if err != nil {
			continue // a thread that ended
		}
		for _, line := range strings.Split(string(b), "\n") {
			if name, v, ok := strings.Cut(line, ":"); ok && strings.HasSuffix(name, "ctxt_switches") {
				n, _ := strconv.Atoi(strings.TrimSpace(v))
				total += n
			}
		}
	}
	return total
}

// TestIdleClusterSleeps checks the seed's fourth goal where it is plainest:
// an OSlet's own work must not pay for the cluster, so a cluster with
// nothing to do runs nothing. After work across OSlets (which wakes the
// inits' heartbeats and the forwarder), the boot process, the cluster's
// PID 1 and every init go back to sleep: no timer of theirs fires while
// nobody waits on anything. Before, each init woke every second to ping
// its peers (36 context switches in 4 s here).
func TestIdleClusterSleeps(t *testing.T) {
	c := boot(t, "--oslets", "2")
	c.must("run", "--on", "1", "--", "smpc", "run", "--on", "2", "--", "true")
	c.must("run", "--detach", "--on", "2", "--", "python3", "-m", "http.server", "18700")
	c.waitPort(t, "tcp", 18700, 2, forwarded)
	st := c.state()
	procs := map[string]int{"the boot process": st.Supervisor, "the cluster's PID 1": st.Reaper}
	if progs := watchPrograms(t); len(progs) < 3 {
		// Without the listen watch the forwarder scans every second.
		t.Logf("no listen watch on this kernel (programs attached: %v): the boot process is not checked", progs)
		delete(procs, "the boot process")
	}
	for k, pid := range st.Inits {
		procs["oslet "+k+"'s init"] = pid
	}
	// The last heartbeat comes up to two beats after the last call, the
	// forwarder's second look 200 ms after a change.
	time.Sleep(3 * time.Second * patience)
	const window, most = 4 * time.Second, 4
	busy := map[string]int{}
	for try := 0; try < 2; try++ { // a second window, should Go's periodic GC fall in the first
		before := map[string]int{}
		for name, pid := range procs {
			before[name] = contextSwitches(t, pid)
		}
		time.Sleep(window)
		busy = map[string]int{}
		for name, pid := range procs {
			if n := contextSwitches(t, pid) - before[name]; n > most {
				busy[name] = n
			}
		}
		if len(busy) == 0 {
			return
		}
	}
	for name, n := range busy {
		t.Errorf("%s woke up %d times in %v of an idle cluster, want at most %d", name, n, window, most)
	}
}
