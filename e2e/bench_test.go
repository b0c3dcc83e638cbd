package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/smpc-cluster/smpc"
	"github.com/smpc-cluster/smpc/internal/bench"
)

// The benchmarks run the code of 'smpc bench' (internal/bench), each side of
// a comparison b.N times in the same run, and report both sides and their
// ratio: "smpc-ns/op" and "native-ns/op" for costs, rates for throughput.

// benchRunner boots a cluster for a benchmark, with extra boot flags, and
// connects to it.
func benchRunner(b *testing.B, flags ...string) *bench.Runner {
	if os.Geteuid() != 0 {
		b.Skip("benchmarks boot a real cluster: run them as root")
	}
	dir := "/run/smpc-e2e-bench"
	_, shutdown, err := bench.Boot(context.Background(), smpcBin, dir, flags...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(shutdown)
	c, err := smpc.Connect(dir)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return &bench.Runner{Client: c, Binary: smpcBin, StateDir: dir}
}

// reportResult reports a result's sides and ratio as metrics, their names
// led by prefix where one benchmark reports several results.
func reportResult(b *testing.B, prefix string, r bench.Result) {
	b.Helper()
	unit := func(side string, m bench.Measure) string { return prefix + side + "-" + m.Unit }
	b.ReportMetric(r.SMPC.Value, unit("smpc", r.SMPC))
	if r.Native != nil {
		b.ReportMetric(r.Native.Value, unit("native", *r.Native))
		b.ReportMetric(r.Ratio, prefix+"ratio")
	}
	if r.Met != nil && !*r.Met {
		b.Logf("%s: ratio %.2f misses the target %s", r.Name, r.Ratio, r.Target)
	}
}

func runBench(b *testing.B, f func(r *bench.Runner, ctx context.Context, n int) (bench.Result, error)) {
	r := benchRunner(b)
	b.ResetTimer()
	res, err := f(r, context.Background(), b.N)
	if err != nil {
		b.Fatal(err)
	}
	reportResult(b, "", res)
}

// BenchmarkNullCall: a null call between two OSlets vs a Unix-socket
// ping-pong between two processes on the same CPUs.
func BenchmarkNullCall(b *testing.B) { runBench(b, (*bench.Runner).NullCall) }

// BenchmarkSpawnTrue: /bin/true created on another OSlet and waited for
// through the Go package vs fork/exec/wait here.
func BenchmarkSpawnTrue(b *testing.B) { runBench(b, (*bench.Runner).Spawn) }

// BenchmarkRunCommand: the whole 'smpc run --on K -- /bin/true' vs /bin/true.
func BenchmarkRunCommand(b *testing.B) { runBench(b, (*bench.Runner).RunCommand) }

// BenchmarkSignalWait: kill and wait, from OSlet 1, of a process on OSlet 2
// vs on OSlet 1.
func BenchmarkSignalWait(b *testing.B) { runBench(b, (*bench.Runner).SignalWait) }

// BenchmarkMsgPingPong: a message round trip through one SysV queue
// between processes on two OSlets vs through a kernel queue between two
// host processes on the same CPUs.
func BenchmarkMsgPingPong(b *testing.B) { runBench(b, (*bench.Runner).MsgPingPong) }

// BenchmarkSemOp: an uncontended semop inside an OSlet on a set of the
// cluster's vs on a set of the host's, on the same CPUs. b.N is in
// milliseconds of looping.
func BenchmarkSemOp(b *testing.B) { runLoopBench(b, (*bench.Runner).SemOp) }

// runLoopBench runs a benchmark whose size is a time to loop: b.N
// milliseconds.
func runLoopBench(b *testing.B, f func(r *bench.Runner, ctx context.Context, d time.Duration) (bench.Result, error)) {
	runBench(b, func(r *bench.Runner, ctx context.Context, n int) (bench.Result, error) {
		return f(r, ctx, time.Duration(n)*time.Millisecond)
	})
}

// BenchmarkExecPlaced: fork and exec of /bin/true under round-robin, each
// exec placed by the init, vs with the default policy. b.N is in
// milliseconds of looping.
func BenchmarkExecPlaced(b *testing.B) { runLoopBench(b, (*bench.Runner).ExecPlaced) }

// BenchmarkBuild: an unmodified make -jN of b.N C files under least-loaded
// over every OSlet vs on the host on the same CPUs (builds per second).
func BenchmarkBuild(b *testing.B) {
	r := benchRunner(b)
	b.ResetTimer()
	res, err := r.Build(context.Background(), max(b.N, 8))
	if errors.Is(err, bench.ErrNoCompiler) {
		b.Skip(err)
	}
	if err != nil {
		b.Fatal(err)
	}
	reportResult(b, "", res)
}

// BenchmarkPipe: b.N MiB through a pipe between two OSlets vs within one, and
// vs host processes on the same CPUs.
func BenchmarkPipe(b *testing.B) {
	r := benchRunner(b)
	b.ResetTimer()
	rs, err := r.Pipe(context.Background(), int64(b.N)<<20)
	if err != nil {
		b.Fatal(err)
	}
	reportAll(b, rs)
}

// reportAll reports several results of one benchmark, each led by its name.
func reportAll(b *testing.B, rs []bench.Result) {
	b.Helper()
	for _, res := range rs {
		reportResult(b, res.Name+"-", res)
	}
}

// BenchmarkNetwork: b.N MiB over TCP, and new connections for 200ms, to a
// server on OSlet 2 through the cluster's port on 127.0.0.1 vs the same
// server on the host on the same CPUs, reached on its loopback.
func BenchmarkNetwork(b *testing.B) {
	r := benchRunner(b)
	b.ResetTimer()
	rs, err := r.Network(context.Background(), int64(b.N)<<20, 200*time.Millisecond)
	if err != nil {
		b.Fatal(err)
	}
	reportAll(b, rs)
}

// BenchmarkRdevRead: b.N MiB (up to 256) of a loop device of OSlet 2 read on
// OSlet 1 through /rdev, with direct device opens and through the FUSE
// files, vs on OSlet 2 from its /dev; and an open with direct device opens
// vs a plain one.
func BenchmarkRdevRead(b *testing.B) {
	name, _ := loopDevice(b, 256<<20)
	r := benchRunner(b, "--device", "2="+name)
	b.ResetTimer()
	rs, err := r.DeviceRead(context.Background(), int64(b.N)<<20, 200*time.Millisecond)
	if err != nil {
		b.Fatal(err)
	}
	reportAll(b, rs)
}

// BenchmarkLocalLoops: CPU-bound and system-call loops inside an OSlet vs on
// the host on the same CPUs. b.N is in milliseconds of looping.
func BenchmarkLocalLoops(b *testing.B) {
	r := benchRunner(b)
	for _, kind := range []string{"cpu", "syscall"} {
		b.Run(kind, func(b *testing.B) {
			res, err := r.Local(context.Background(), kind, time.Duration(b.N)*time.Millisecond)
			if err != nil {
				b.Fatal(err)
			}
			reportResult(b, "", res)
		})
	}
}

// BenchmarkScaling boots clusters of 1, 2, 4 and 8 OSlets (as many as the
// machine holds) and reports their aggregate spawn and null-call rates, in
// rounds of a second whatever b.N is.
func BenchmarkScaling(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("benchmarks boot real clusters: run them as root")
	}
	sizes, per := bench.DefaultSizes(runtime.NumCPU())
	s := &bench.Scaling{Binary: smpcBin, StateDir: "/run/smpc-e2e-scaling", Sizes: sizes, CPUsPerOSlet: per,
		For: time.Second}
	rs, err := s.Run(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	reportAll(b, rs)
}

// TestBenchCommand runs 'smpc bench --json --scaling', small, as a user
// would, and checks that every figure is there and sane.
func TestBenchCommand(t *testing.T) {
	c := boot(t)
	out, code := c.smpc("bench", "--json", "-n", "100", "--bytes", "16M", "--loop-time", "50ms", "--build-files", "8", "--scaling", "--round-time", "200ms", "--failure")
	if code != 0 {
		t.Fatalf("smpc bench: exit %d: %s", code, out)
	}
	var got struct{ Results []bench.Result }
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("smpc bench --json: %v: %s", err, out)
	}
	seen := map[string]bench.Result{}
	for _, r := range got.Results {
		seen[r.Name] = r
		// An idle cluster's cost stands beside zero, the cost of none, and
		// may be zero itself.
		if strings.HasPrefix(r.Name, "idle-") {
			if r.SMPC.Value < 0 || r.Native == nil || r.Native.Value != 0 {
				t.Errorf("%s: %+v", r.Name, r)
			}
			continue
		}
		if r.SMPC.Value <= 0 || (r.Native != nil && (r.Native.Value <= 0 || r.Ratio <= 0)) {
			t.Errorf("%s: empty figure: %+v", r.Name, r)
		}
	}
	want := []string{"null-call", "spawn", "run-command", "signal-wait", "pipe", "pipe-same-cpus",
		"msg-pingpong", "semop", "exec-placed", "cpu-loop", "syscall-loop", "boot-1", "scale-spawn-1",
		"detect-death", "detect-hang", "idle-1"}
	if _, err := exec.LookPath("gcc"); err == nil {
		want = append(want, "build")
	}
	if runtime.NumCPU() >= 2 {
		want = append(want, "boot-2", "idle-2", "scale-spawn-2", "scale-null-call-2")
	}
	for _, name := range want {
		if _, ok := seen[name]; !ok {
			t.Errorf("smpc bench --json has no %q: %s", name, out)
		}
	}
	// The clusters it booted are gone.
	for _, pattern := range []string{"/run/smpc-bench-scaling-*/cluster.json", "/run/smpc-bench-failure-*/cluster.json"} {
		if left, _ := filepath.Glob(pattern); len(left) > 0 {
			t.Errorf("clusters left behind: %v", left)
		}
	}
	if r := seen["detect-death"]; r.Met == nil || !*r.Met {
		t.Errorf("a dead OSlet was seen down only after %v", time.Duration(r.SMPC.Value))
	}
}
