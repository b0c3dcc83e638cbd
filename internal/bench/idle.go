package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/smpc-cluster/smpc/internal/statedir"
)

// IdleTarget is the seed's goal 4 for a cluster with nothing to do: its
// own processes (the boot process, the cluster's PID 1, the inits) use
// under this share of one CPU per OSlet, so that an OSlet never slows its
// own work.
const IdleTarget = 0.1 // percent of a CPU per OSlet

// idleCost measures the CPU time the cluster on dir uses while nothing runs
// in it, over window, as a percent of one CPU per OSlet.
func idleCost(dir string, window time.Duration) (float64, error) {
	rec, err := statedir.ReadRecord(dir)
	if err != nil {
		return 0, err
	}
	pids := []int{rec.Supervisor, rec.Reaper}
	for _, pid := range rec.Inits {
		pids = append(pids, pid)
	}
	before := cpuTime(pids)
	start := time.Now()
	time.Sleep(window)
	used := cpuTime(pids) - before
	return float64(used) / float64(time.Since(start)) * 100 / float64(len(rec.Inits)), nil
}

// cpuTime sums the time on a CPU of every thread of the processes pids, in
// nanoseconds, from the scheduler's statistics (finer than stat's ticks).
func cpuTime(pids []int) time.Duration {
	var total time.Duration
	for _, pid := range pids {
		tasks, _ := filepath.Glob(filepath.Join("/proc", strconv.Itoa(pid), "task", "*", "schedstat"))
		for _, t := range tasks {
			b, err := os.ReadFile(t)
			if err != nil {
				continue // the thread ended
			}
			if f := strings.Fields(string(b)); len(f) > 0 {
				ns, _ := strconv.ParseInt(f[0], 10, 64)
				total += time.Duration(ns)
			}
		}
	}
	return total
}

// idleResult sets the idle cost of a cluster of n OSlets beside zero, the
// cost of no cluster.
func idleResult(n int, percent float64) Result {
	met := percent < IdleTarget
	return Result{
		Name:   fmt.Sprintf("idle-%d", n),
		SMPC:   Measure{fmt.Sprintf("an idle %d-OSlet cluster: its boot process, PID 1 and inits", n), percent, "% CPU/OSlet"},
		Native: &Measure{"no cluster", 0, "% CPU/OSlet"},
		Target: fmt.Sprintf("< %g", IdleTarget), Met: &met,
	}
}
