package bench

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"sync"
	"time"

	"github.com/smpc-cluster/smpc"
)

// Scaling measures the seed's goal 3, linear scalability: clusters of each
// size, with OSlets of the same CPU count, every OSlet at once creating
// processes on the next one (and, in a second round, making null calls to
// it). A cluster of N OSlets should reach at least 0.8 x N times the rate of
// one OSlet; for null calls, which need two OSlets, N/2 times the rate of two.
// A fabric with one shared lock or one central process would not.
type Scaling struct {
	Binary string // the smpc binary, booted and run as helper
	// StateDir is the prefix of the state dirs of the clusters it boots; the
	// size is appended.
	StateDir     string
	Sizes        []int
	CPUsPerOSlet int
	For          time.Duration // how long each round runs
}

// DefaultSizes returns the cluster sizes of 1, 2, 4 and 8 OSlets that a
// machine of ncpu CPUs holds, with the CPUs per OSlet that lets 8 fit.
func DefaultSizes(ncpu int) (sizes []int, cpusPer int) {
	cpusPer = max(1, ncpu/8)
	for _, n := range []int{1, 2, 4, 8} {
		if n*cpusPer <= ncpu {
			sizes = append(sizes, n)
		}
	}
	return sizes, cpusPer
}

// Run boots each cluster in turn, measures it and shuts it down. Results
// come per size: boot time, spawn rate, and for two OSlets or more the null
// call rate.
func (s *Scaling) Run(ctx context.Context) ([]Result, error) {
	var out []Result
	var spawn1, null2, native1 float64
	for _, n := range s.Sizes {
		rs, spawn, null, native, err := s.one(ctx, n)
		if err != nil {
			return out, err
		}
		out = append(out, rs[0]) // boot
		// The machine's own scaling, without smpc: the ceiling for smpc's.
		name := fmt.Sprintf("scale-native-fork-%d", n)
		m := Measure{fmt.Sprintf("%d host processes on the same CPUs forking /bin/true", n), native, "spawns/s"}
		if n == 1 {
			native1 = native
			out = append(out, Result{Name: name, SMPC: m})
		} else if native1 > 0 {
			out = append(out, compare(name, m, Measure{fmt.Sprintf("%d x one process", n), float64(n) * native1, "spawns/s"}, 0))
		}
		name = fmt.Sprintf("scale-spawn-%d", n)
		m = Measure{fmt.Sprintf("%d OSlets of %d CPUs creating processes on each other", n, s.CPUsPerOSlet), spawn, "spawns/s"}
		switch {
		case n == 1:
			spawn1 = spawn
			out = append(out, Result{Name: name, SMPC: m})
		case spawn1 > 0:
			out = append(out, compare(name, m, Measure{fmt.Sprintf("%d x one OSlet", n), float64(n) * spawn1, "spawns/s"}, 0.8))
		default:
			out = append(out, Result{Name: name, SMPC: m})
		}
		if n < 2 {
			continue
		}
		name = fmt.Sprintf("scale-null-call-%d", n)
		m = Measure{fmt.Sprintf("%d OSlets making null calls to each other", n), null, "calls/s"}
		if n == 2 {
			null2 = null
			out = append(out, Result{Name: name, SMPC: m})
		} else {
			out = append(out, compare(name, m, Measure{fmt.Sprintf("%d/2 x two OSlets", n), float64(n) / 2 * null2, "calls/s"}, 0.8))
		}
	}
	return out, nil
}

// one boots a cluster of n OSlets and measures it, and the same CPUs without
// smpc.
func (s *Scaling) one(ctx context.Context, n int) (boot []Result, spawn, null, native float64, err error) {
	dir := s.StateDir + "-" + strconv.Itoa(n)
	shutdown := func() { exec.Command(s.Binary, "shutdown", "--state-dir", dir).Run() }
	shutdown() // a cluster left by an interrupted run
	start := time.Now()
	out, err := exec.CommandContext(ctx, s.Binary, "boot", "--detach", "--state-dir", dir,
		"--oslets", strconv.Itoa(n), "--cpus-per-oslet", strconv.Itoa(s.CPUsPerOSlet)).CombinedOutput()
	took := time.Since(start)
	if err != nil {
		return nil, 0, 0, 0, fmt.Errorf("bench scaling: boot %d OSlets: %w: %s", n, err, out)
	}
	defer shutdown()
	perOSlet := took / time.Duration(n)
	met := perOSlet < 100*time.Millisecond
	boot = []Result{{
		Name:   fmt.Sprintf("boot-%d", n),
		SMPC:   Measure{fmt.Sprintf("smpc boot --detach, %d OSlets, to ready", n), float64(took.Nanoseconds()), "ns"},
		Target: "< 100ms per OSlet", Met: &met,
	}}
	c, err := smpc.Connect(dir)
	if err != nil {
		return nil, 0, 0, 0, err
	}
	defer c.Close()
	r := &Runner{Client: c, Binary: s.Binary, StateDir: dir}
	ks := c.OSlets()
	next := func(i int) int { return ks[(i+1)%len(ks)] }

	rates := make([]float64, len(ks))
	errs := make([]error, len(ks))
	var wg sync.WaitGroup
	for i, k := range ks {
		wg.Go(func() {
			count, ns, err := r.helperOn(ctx, k, "spawn-loop", "--to", strconv.Itoa(next(i)), "--for", s.For.String())
			rates[i], errs[i] = count/ns*1e9, err
		})
	}
	wg.Wait()
	if spawn, err = sum(rates, errs); err != nil {
		return nil, 0, 0, 0, fmt.Errorf("bench scaling: %d OSlets: spawn loop: %w", n, err)
	}
	for i, k := range ks {
		wg.Go(func() {
			cpus, err := r.cpusOf(ctx, k)
			if err != nil {
				errs[i] = err
				return
			}
			out, err := exec.CommandContext(ctx, s.Binary, "bench-helper", "--cpus", cpus, "fork-loop", "--for", s.For.String()).Output()
			if err != nil {
				errs[i] = exitDetail(err)
				return
			}
			count, ns, err := parseReport(string(out))
			rates[i], errs[i] = count/ns*1e9, err
		})
	}
	wg.Wait()
	if native, err = sum(rates, errs); err != nil {
		return nil, 0, 0, 0, fmt.Errorf("bench scaling: %d OSlets: native fork loop: %w", n, err)
	}
	if n < 2 {
		return boot, spawn, 0, native, nil
	}
	// Size the null-call round from one OSlet's rate alone.
	calls := 500
	ns, err := c.PingPeer(ctx, ks[0], ks[1], calls)
	if err != nil {
		return nil, 0, 0, 0, fmt.Errorf("bench scaling: %d OSlets: null call: %w", n, err)
	}
	calls = max(calls, int(float64(s.For.Nanoseconds())/(ns/float64(calls))))
	for i, k := range ks {
		wg.Go(func() {
			ns, err := c.PingPeer(ctx, k, next(i), calls)
			rates[i], errs[i] = float64(calls)/ns*1e9, err
		})
	}
	wg.Wait()
	if null, err = sum(rates, errs); err != nil {
		return nil, 0, 0, 0, fmt.Errorf("bench scaling: %d OSlets: null calls: %w", n, err)
	}
	return boot, spawn, null, native, nil
}

func sum(rates []float64, errs []error) (float64, error) {
	total := 0.0
	for i, r := range rates {
		if errs[i] != nil {
			return 0, errs[i]
		}
		total += r
	}
	return total, nil
}
