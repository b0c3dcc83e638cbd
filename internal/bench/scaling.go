package bench

import (
	"context"
	"fmt"
	"hash/fnv"
	"os/exec"
	"strconv"
	"strings"
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

// idleSettle is how long a cluster runs after its boot before its idle
// cost is measured: the port forwarder's scans after boot are over.
const idleSettle = 2 * time.Second

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
// come per size: boot time, the machine's own fork rate, the spawn rate, and
// for two OSlets or more the null call rate.
func (s *Scaling) Run(ctx context.Context) ([]Result, error) {
	var out []Result
	var spawn1, null2, native1 float64
	for _, n := range s.Sizes {
		m, err := s.one(ctx, n)
		if err != nil {
			return out, err
		}
		out = append(out, m.boot, m.idle,
			// The machine's own scaling, without smpc: the ceiling for smpc's.
			against(fmt.Sprintf("scale-native-fork-%d", n), n, 1, &native1, 0,
				Measure{fmt.Sprintf("%d host processes on the same CPUs forking /bin/true", n), m.native, "spawns/s"}, "x one process"),
			against(fmt.Sprintf("scale-spawn-%d", n), n, 1, &spawn1, 0.8,
				Measure{fmt.Sprintf("%d OSlets of %d CPUs creating processes on each other", n, s.CPUsPerOSlet), m.spawn, "spawns/s"}, "x one OSlet"))
		if n >= 2 {
			out = append(out, against(fmt.Sprintf("scale-null-call-%d", n), n, 2, &null2, 0.8,
				Measure{fmt.Sprintf("%d OSlets making null calls to each other", n), m.null, "calls/s"}, "x two OSlets"))
		}
	}
	return out, nil
}

// against sets a rate at size n beside the rate at size baseN scaled to n.
// At size baseN it records that rate in base and has nothing to compare.
func against(name string, n, baseN int, base *float64, limit float64, m Measure, baseWhat string) Result {
	if n == baseN {
		*base = m.Value
	}
	if n <= baseN || *base == 0 {
		return Result{Name: name, SMPC: m}
	}
	factor := float64(n) / float64(baseN)
	return compare(name, m, Measure{fmt.Sprintf("%g %s", factor, baseWhat), factor * *base, m.Unit}, limit)
}

// Boot boots a cluster on state dir dir with 'smpc boot --detach' and extra
// flags, first shutting down one that an interrupted run left there. It
// returns the time to ready and the function that shuts the cluster down.
func Boot(ctx context.Context, binary, dir string, flags ...string) (took time.Duration, shutdown func(), err error) {
	shutdown = func() { exec.Command(binary, "shutdown", "--state-dir", dir).Run() }
	shutdown()
	// A subnet of its own, named after the state dir: the clusters it boots
	// run beside the one the user benchmarks.
	h := fnv.New32a()
	h.Write([]byte(dir))
	flags = append(flags, "--subnet", fmt.Sprintf("10.%d.%d.0/24", 80+h.Sum32()%40, h.Sum32()>>8&0xff))
	start := time.Now()
	out, err := exec.CommandContext(ctx, binary, append([]string{"boot", "--detach", "--state-dir", dir}, flags...)...).CombinedOutput()
	if err != nil {
		return 0, nil, fmt.Errorf("boot on %s: %w: %s", dir, err, strings.TrimSpace(string(out)))
	}
	return time.Since(start), shutdown, nil
}

// sizeMeasures are what one cluster size gave.
type sizeMeasures struct {
	boot, idle          Result
	spawn, null, native float64 // aggregate rates
}

// one boots a cluster of n OSlets and measures it, and the same CPUs without
// smpc.
func (s *Scaling) one(ctx context.Context, n int) (m sizeMeasures, err error) {
	fail := func(what string, err error) (sizeMeasures, error) {
		return sizeMeasures{}, fmt.Errorf("bench scaling: %d OSlets: %s: %w", n, what, err)
	}
	dir := s.StateDir + "-" + strconv.Itoa(n)
	took, shutdown, err := Boot(ctx, s.Binary, dir, "--oslets", strconv.Itoa(n), "--cpus-per-oslet", strconv.Itoa(s.CPUsPerOSlet))
	if err != nil {
		return fail("boot", err)
	}
	defer shutdown()
	met := took/time.Duration(n) < 100*time.Millisecond
	m.boot = Result{
		Name:   fmt.Sprintf("boot-%d", n),
		SMPC:   Measure{fmt.Sprintf("smpc boot --detach, %d OSlets, to ready", n), float64(took.Nanoseconds()), "ns"},
		Target: "< 100ms per OSlet", Met: &met,
	}
	// Idle first, before any process ran: after the forwarder's first
	// scans (a second or so of back-off), over at least two seconds.
	time.Sleep(idleSettle)
	idle, err := idleCost(dir, max(2*time.Second, s.For))
	if err != nil {
		return fail("idle cost", err)
	}
	m.idle = idleResult(n, idle)
	c, err := smpc.Connect(dir)
	if err != nil {
		return fail("connect", err)
	}
	defer c.Close()
	r := &Runner{Client: c, Binary: s.Binary, StateDir: dir}
	ks := c.OSlets()
	next := func(i int) int { return ks[(i+1)%len(ks)] }
	cpus, err := r.cpusOf(ctx, ks...)
	if err != nil {
		return fail("status", err)
	}
	perSecond := func(count, ns float64, err error) (float64, error) { return count / ns * 1e9, err }

	m.spawn, err = everyOSlet(ks, func(i, k int) (float64, error) {
		return perSecond(r.helperOn(ctx, k, "spawn-loop", "--to", strconv.Itoa(next(i)), "--for", s.For.String()))
	})
	if err != nil {
		return fail("spawn loop", err)
	}
	m.native, err = everyOSlet(ks, func(i, _ int) (float64, error) {
		return perSecond(r.helperPinned(ctx, cpus[i], "fork-loop", "--for", s.For.String()))
	})
	if err != nil {
		return fail("native fork loop", err)
	}
	if n < 2 {
		return m, nil
	}
	// Size the null-call round from one OSlet's rate alone.
	calls := 500
	ns, err := c.PingPeer(ctx, ks[0], ks[1], calls)
	if err != nil {
		return fail("null call", err)
	}
	calls = max(calls, int(float64(s.For.Nanoseconds())/(ns/float64(calls))))
	m.null, err = everyOSlet(ks, func(i, k int) (float64, error) {
		ns, err := c.PingPeer(ctx, k, next(i), calls)
		return perSecond(float64(calls), ns, err)
	})
	if err != nil {
		return fail("null calls", err)
	}
	return m, nil
}

// everyOSlet runs rate for every OSlet at once and returns the sum of the
// rates, or the first error.
func everyOSlet(ks []int, rate func(i, k int) (float64, error)) (float64, error) {
	rates := make([]float64, len(ks))
	errs := make([]error, len(ks))
	var wg sync.WaitGroup
	for i, k := range ks {
		wg.Go(func() { rates[i], errs[i] = rate(i, k) })
	}
	wg.Wait()
	total := 0.0
	for i, r := range rates {
		if errs[i] != nil {
			return 0, errs[i]
		}
		total += r
	}
	return total, nil
}
