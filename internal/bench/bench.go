// Package bench measures what the single-system image costs: each of smpc's
// cross-OSlet operations beside the native Linux operation it stands for,
// both sides measured in the same run so that their ratio does not depend on
// how busy the machine happened to be. 'smpc bench' and the go test
// benchmarks in e2e run the same code.
//
// The native sides and the programs that run inside OSlets (the echoing
// peer, the pipe's ends, the loops, the spawning drivers) are the smpc binary
// itself, started as 'smpc bench-helper', so a measurement needs nothing but
// the binary.
package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc"
)

// Measure is one side of a comparison.
type Measure struct {
	What  string  `json:"what"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit"` // "ns/op" for a cost, anything "/s" for a rate
}

// IsRate reports whether a larger value is better.
func (m Measure) IsRate() bool { return strings.HasSuffix(m.Unit, "/s") }

// Result sets an smpc figure beside the native figure it stands for.
type Result struct {
	Name   string   `json:"name"`
	SMPC   Measure  `json:"smpc"`
	Native *Measure `json:"native,omitempty"`
	// Ratio is SMPC's value over Native's, in the same unit: for a cost
	// lower is better, for a rate higher is better.
	Ratio float64 `json:"ratio,omitempty"`
	// Target is the design's goal for Ratio ("<= 1.5", ">= 0.95"), or for
	// the value itself where there is no native side.
	Target string `json:"target,omitempty"`
	Met    *bool  `json:"met,omitempty"`
}

// compare builds a Result; limit is the target ratio (at most for a cost, at
// least for a rate), 0 for none.
func compare(name string, s, n Measure, limit float64) Result {
	r := Result{Name: name, SMPC: s, Native: &n}
	if n.Value > 0 {
		r.Ratio = s.Value / n.Value
	}
	if limit > 0 {
		met := r.Ratio <= limit
		r.Target = fmt.Sprintf("<= %g", limit)
		if s.IsRate() {
			met = r.Ratio >= limit
			r.Target = fmt.Sprintf(">= %g", limit)
		}
		r.Met = &met
	}
	return r
}

// Runner runs benchmarks against a booted cluster.
type Runner struct {
	Client *smpc.Client
	// Binary is the smpc binary that helpers run. Processes in OSlets run it
	// too, so it must not lie under /tmp, which is private to each OSlet.
	Binary string
	// StateDir names the cluster to 'smpc run' (RunCommand); "" inside an
	// OSlet or for the default.
	StateDir string
}

// Defaults for the sizes of the measurements.
const (
	DefaultCalls     = 2000
	DefaultPipeBytes = 1 << 30
	DefaultLoopTime  = 500 * time.Millisecond
	// Reps is how often throughput and loop figures are taken, alternating
	// sides; the best of each side counts, as noise only ever slows a run.
	Reps = 3
	// LoopReps is Reps for the loops, whose sides differ by a few percent
	// at most, less than this machine's noise between two runs.
	LoopReps = 5
)

// pair picks two OSlets: the caller's own (or the first) and another.
func (r *Runner) pair() (a, b int, err error) {
	ks := r.Client.OSlets()
	if len(ks) < 2 {
		return 0, 0, fmt.Errorf("bench: needs a cluster of at least 2 OSlets, this one has %d", len(ks))
	}
	a, b = ks[0], ks[1]
	if self := r.Client.Self(); self != 0 {
		a = self
		for _, k := range ks {
			if k != self {
				b = k
				break
			}
		}
	}
	return a, b, nil
}

// NullCall times a null call from one OSlet to another over their proxy
// channel beside a ping-pong of the same size over a Unix socket between two
// processes.
func (r *Runner) NullCall(ctx context.Context, n int) (Result, error) {
	a, b, err := r.pair()
	if err != nil {
		return Result{}, err
	}
	ns, err := r.Client.PingPeer(ctx, a, b, n)
	if err != nil {
		return Result{}, fmt.Errorf("bench null-call: %w", err)
	}
	cpus, err := r.cpusOf(ctx, a, b)
	if err != nil {
		return Result{}, err
	}
	cpusA, cpusB := cpus[0], cpus[1]
	native, err := r.unixPingPong(n, cpusA, cpusB)
	if err != nil {
		return Result{}, fmt.Errorf("bench null-call: native ping-pong: %w", err)
	}
	return compare("null-call",
		Measure{fmt.Sprintf("null call, oslet %d to oslet %d", a, b), ns / float64(n), "ns/op"},
		Measure{fmt.Sprintf("Unix socket ping-pong, CPUs %s to %s", cpusA, cpusB), native, "ns/op"}, 1.5), nil
}

// pinned runs f on a thread pinned to cpus, as the native side of a
// comparison whose smpc side runs in an OSlet on those CPUs.
func pinned(cpus string, f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var old unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		return err
	}
	if err := Pin(cpus); err != nil {
		return err
	}
	defer unix.SchedSetaffinity(0, &old)
	return f()
}

// unixPingPong returns the time of one round trip of a 24-byte message (a
// fabric header's size) over a SOCK_SEQPACKET pair from a thread on CPUs
// here to an echoing process on CPUs there.
func (r *Runner) unixPingPong(n int, here, there string) (took float64, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	peer := os.NewFile(uintptr(fds[1]), "echo")
	echo := exec.Command(r.Binary, "bench-helper", "--cpus", there, "echo")
	echo.ExtraFiles = []*os.File{peer}
	echo.Stderr = os.Stderr
	err = echo.Start()
	peer.Close()
	if err != nil {
		unix.Close(fds[0])
		return 0, err
	}
	defer func() {
		unix.Close(fds[0]) // the helper ends when it reads the end
		echo.Wait()
	}()
	buf := make([]byte, 64)
	roundTrip := func() error {
		if _, err := unix.Write(fds[0], buf[:24]); err != nil {
			return err
		}
		_, err := unix.Read(fds[0], buf)
		return err
	}
	if err := roundTrip(); err != nil { // the helper is up
		return 0, err
	}
	err = pinned(here, func() error {
		start := time.Now()
		for i := 0; i < n; i++ {
			if err := roundTrip(); err != nil {
				return err
			}
		}
		took = perOp(time.Since(start), n)
		return nil
	})
	return took, err
}

// Spawn times creating /bin/true on another OSlet and waiting for its exit
// through the Go package, already connected, beside fork/exec/wait of
// /bin/true here.
func (r *Runner) Spawn(ctx context.Context, n int) (Result, error) {
	_, b, err := r.pair()
	if err != nil {
		return Result{}, err
	}
	took, err := r.spawnWait(ctx, b, n)
	if err != nil {
		return Result{}, fmt.Errorf("bench spawn: %w", err)
	}
	native, err := timeNative(n, "/bin/true")
	if err != nil {
		return Result{}, fmt.Errorf("bench spawn: native: %w", err)
	}
	return compare("spawn",
		Measure{fmt.Sprintf("spawn+wait /bin/true on oslet %d", b), took, "ns/op"},
		Measure{"fork/exec/wait /bin/true", native, "ns/op"}, 1.5), nil
}

// spawnWait times creating /bin/true on OSlet k and waiting for it through
// the Go package, n times, per operation.
func (r *Runner) spawnWait(ctx context.Context, k, n int) (float64, error) {
	start := time.Now()
	for i := 0; i < n; i++ {
		cmd := r.Client.Command("/bin/true")
		cmd.OSlet = k
		if err := succeed(cmd.Run(ctx)); err != nil {
			return 0, fmt.Errorf("oslet %d: /bin/true: %w", k, err)
		}
	}
	return perOp(time.Since(start), n), nil
}

// RunCommand times the whole 'smpc run --on K -- /bin/true' command, as a
// user or a make recipe pays it, beside what it cannot do without: starting
// a Go program (a static one that only exits) plus one remote spawn and
// wait through the Go package, both measured in this run. Without a Go
// toolchain to build that program, the start-up of /bin/true stands in.
func (r *Runner) RunCommand(ctx context.Context, n int) (Result, error) {
	_, b, err := r.pair()
	if err != nil {
		return Result{}, err
	}
	args := []string{"run", "--on", strconv.Itoa(b), "--", "/bin/true"}
	if r.StateDir != "" {
		args = append([]string{"--state-dir", r.StateDir}, args...)
	}
	took, err := timeNative(n, r.Binary, args...)
	if err != nil {
		return Result{}, fmt.Errorf("bench run-command: smpc %s: %w", strings.Join(args, " "), err)
	}
	spawn, err := r.spawnWait(ctx, b, n)
	if err != nil {
		return Result{}, fmt.Errorf("bench run-command: %w", err)
	}
	start, startName := "/bin/true", "/bin/true"
	if exit, err := buildExitProgram(ctx); err == nil {
		defer os.RemoveAll(filepath.Dir(exit))
		start, startName = exit, "a static Go program that exits"
	}
	started, err := timeNative(n, start)
	if err != nil {
		return Result{}, fmt.Errorf("bench run-command: %s: %w", startName, err)
	}
	return compare("run-command",
		Measure{fmt.Sprintf("smpc run --on %d -- /bin/true", b), took, "ns/op"},
		Measure{startName + " + spawn+wait through the Go package", started + spawn, "ns/op"}, 1.2), nil
}

// buildExitProgram builds a static Go program that only exits, the least a
// command written in Go costs to start, in a directory of its own.
func buildExitProgram(ctx context.Context) (string, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "smpc-bench-exit-")
	if err != nil {
		return "", err
	}
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte("package main\n\nfunc main() {}\n"), 0o644); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	bin := filepath.Join(dir, "exit")
	build := exec.CommandContext(ctx, goTool, "build", "-o", bin, src)
	build.Dir = dir
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := build.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("build a static Go program: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return bin, nil
}

// SignalWait times, from a process on one OSlet, killing a process and
// waiting for its exit status when the process lives on another OSlet,
// beside the same when it lives on the caller's own OSlet.
func (r *Runner) SignalWait(ctx context.Context, n int) (Result, error) {
	a, b, err := r.pair()
	if err != nil {
		return Result{}, err
	}
	measure := func(to int) (float64, error) {
		count, ns, err := r.helperOn(ctx, a, "signal-wait", "--to", strconv.Itoa(to), "-n", strconv.Itoa(n))
		if err != nil {
			return 0, fmt.Errorf("bench signal-wait: from oslet %d to oslet %d: %w", a, to, err)
		}
		return ns / count, nil
	}
	cross, err := measure(b)
	if err != nil {
		return Result{}, err
	}
	same, err := measure(a)
	if err != nil {
		return Result{}, err
	}
	return compare("signal-wait",
		Measure{fmt.Sprintf("kill+wait, oslet %d to oslet %d", a, b), cross, "ns/op"},
		Measure{fmt.Sprintf("kill+wait within oslet %d", a), same, "ns/op"}, 1.1), nil
}

// Pipe measures the throughput of a pipe whose writer and reader live on two
// OSlets beside one whose ends share an OSlet, and beside one between host
// processes pinned to the same CPUs as the two OSlets. The second comparison
// separates what smpc costs (nothing: it is the kernel's pipe) from what the
// placement costs: a pipe between two CPUs moves its data between caches,
// one within a CPU does not.
func (r *Runner) Pipe(ctx context.Context, bytes int64) ([]Result, error) {
	a, b, err := r.pair()
	if err != nil {
		return nil, err
	}
	cpus, err := r.cpusOf(ctx, a, b)
	if err != nil {
		return nil, err
	}
	cpusA, cpusB := cpus[0], cpus[1]
	var cross, one, host float64
	for i := 0; i < Reps; i++ {
		c, err := r.pipeRate(ctx, a, b, bytes)
		if err != nil {
			return nil, err
		}
		o, err := r.pipeRate(ctx, a, a, bytes)
		if err != nil {
			return nil, err
		}
		h, err := r.hostPipeRate(ctx, cpusA, cpusB, bytes)
		if err != nil {
			return nil, err
		}
		cross, one, host = max(cross, c), max(one, o), max(host, h)
	}
	crossM := Measure{fmt.Sprintf("pipe, oslet %d to oslet %d", a, b), cross, "MB/s"}
	return []Result{
		compare("pipe", crossM, Measure{fmt.Sprintf("pipe within oslet %d", a), one, "MB/s"}, 0.95),
		compare("pipe-same-cpus", crossM, Measure{fmt.Sprintf("pipe between host processes, CPUs %s to %s", cpusA, cpusB), host, "MB/s"}, 0.95),
	}, nil
}

// hostPipeRate is pipeRate for two host processes pinned to CPU lists.
func (r *Runner) hostPipeRate(ctx context.Context, cpusW, cpusR string, bytes int64) (float64, error) {
	reader := exec.CommandContext(ctx, r.Binary, "bench-helper", "--cpus", cpusR, "pipe-read")
	writer := exec.CommandContext(ctx, r.Binary, "bench-helper", "--cpus", cpusW, "pipe-write", strconv.FormatInt(bytes, 10))
	var err error
	if writer.Stdout, err = reader.StdinPipe(); err != nil {
		return 0, err
	}
	var out strings.Builder
	reader.Stdout, reader.Stderr, writer.Stderr = &out, os.Stderr, os.Stderr
	if err := reader.Start(); err != nil {
		return 0, fmt.Errorf("bench pipe: host reader: %w", err)
	}
	werr := writer.Run()
	writer.Stdout.(io.Closer).Close()
	rerr := reader.Wait()
	if werr != nil || rerr != nil {
		return 0, fmt.Errorf("bench pipe: host writer: %v, reader: %v", werr, rerr)
	}
	got, ns, err := parseReport(out.String())
	if err != nil {
		return 0, fmt.Errorf("bench pipe: host reader: %w", err)
	}
	return got / ns * 1e3, nil
}

// pipeRate joins a writer on OSlet w and a reader on OSlet rd by a pipe made
// here, and returns the rate the reader saw from its first byte to the end.
func (r *Runner) pipeRate(ctx context.Context, w, rd int, bytes int64) (float64, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer pr.Close()
	defer pw.Close()
	reader := r.Client.Command(r.Binary, "bench-helper", "pipe-read")
	reader.OSlet, reader.Stdin = rd, pr
	report, err := r.start(ctx, reader)
	if err != nil {
		return 0, fmt.Errorf("bench pipe: reader on oslet %d: %w", rd, err)
	}
	pr.Close()
	writer := r.Client.Command(r.Binary, "bench-helper", "pipe-write", strconv.FormatInt(bytes, 10))
	writer.OSlet, writer.Stdout = w, pw
	err = writer.Start(ctx)
	pw.Close()
	if err != nil {
		r.Client.Signal(ctx, reader.PID, syscall.SIGKILL)
		report()
		return 0, fmt.Errorf("bench pipe: writer on oslet %d: %w", w, err)
	}
	if err := succeed(writer.Wait(ctx)); err != nil {
		return 0, fmt.Errorf("bench pipe: writer on oslet %d: %w", w, err)
	}
	got, ns, err := report()
	if err != nil {
		return 0, fmt.Errorf("bench pipe: reader on oslet %d: %w", rd, err)
	}
	if int64(got) != bytes {
		return 0, fmt.Errorf("bench pipe: reader on oslet %d got %d bytes of %d", rd, int64(got), bytes)
	}
	return got / ns * 1e3, nil // bytes per ns is GB/s; MB/s is a thousand times that
}

// start starts cmd with its standard output on a pipe, and returns a
// function that waits for it and parses the "count nanoseconds" line every
// helper prints.
func (r *Runner) start(ctx context.Context, cmd *smpc.Cmd) (report func() (count, ns float64, err error), err error) {
	out, in, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = in, os.Stderr
	err = cmd.Start(ctx)
	in.Close()
	if err != nil {
		out.Close()
		return nil, err
	}
	return func() (float64, float64, error) {
		defer out.Close()
		line, rerr := bufio.NewReader(out).ReadString('\n')
		if err := succeed(cmd.Wait(ctx)); err != nil {
			return 0, 0, err
		}
		if rerr != nil && rerr != io.EOF {
			return 0, 0, rerr
		}
		return parseReport(line)
	}, nil
}

// helperOn runs a helper on OSlet k and returns its report.
func (r *Runner) helperOn(ctx context.Context, k int, args ...string) (count, ns float64, err error) {
	return r.helperOnWith(ctx, k, false, args...)
}

// helperOnWith runs a helper on OSlet k, with direct device opens if
// direct, and returns its report.
func (r *Runner) helperOnWith(ctx context.Context, k int, direct bool, args ...string) (count, ns float64, err error) {
	cmd := r.Client.Command(r.Binary, append([]string{"bench-helper"}, args...)...)
	cmd.OSlet, cmd.DirectDevices = k, direct
	report, err := r.start(ctx, cmd)
	if err != nil {
		return 0, 0, err
	}
	return report()
}

// Local runs a loop (kind "cpu" or "syscall") inside an OSlet and on the host
// pinned to the same CPUs, and sets their rates side by side: the seed's
// goal that local work runs as fast as on a standalone OS.
func (r *Runner) Local(ctx context.Context, kind string, d time.Duration) (Result, error) {
	a, _, err := r.pair()
	if err != nil {
		return Result{}, err
	}
	cpuList, err := r.cpusOf(ctx, a)
	if err != nil {
		return Result{}, err
	}
	cpus := cpuList[0]
	loop := []string{"loop", kind, "--for", d.String()}
	var inside, host float64
	for i := 0; i < LoopReps; i++ {
		count, ns, err := r.helperOn(ctx, a, loop...)
		if err != nil {
			return Result{}, fmt.Errorf("bench %s loop: oslet %d: %w", kind, a, err)
		}
		inside = max(inside, count/ns*1e9)
		count, ns, err = r.helperPinned(ctx, cpus, loop...)
		if err != nil {
			return Result{}, fmt.Errorf("bench %s loop: host: %w", kind, err)
		}
		host = max(host, count/ns*1e9)
	}
	what := map[string]string{"cpu": "CPU-bound loop", "syscall": "getpid+read(64) loop"}[kind]
	return compare(kind+"-loop",
		Measure{fmt.Sprintf("%s in oslet %d", what, a), inside, "iterations/s"},
		Measure{fmt.Sprintf("%s on the host, CPUs %s", what, cpus), host, "iterations/s"}, 0.98), nil
}

// helperPinned runs a helper on the host, pinned to cpus, and returns its
// report: the native side of a helper that runs in an OSlet.
func (r *Runner) helperPinned(ctx context.Context, cpus string, args ...string) (count, ns float64, err error) {
	out, err := exec.CommandContext(ctx, r.Binary, append([]string{"bench-helper", "--cpus", cpus}, args...)...).Output()
	if err != nil {
		return 0, 0, exitDetail(err)
	}
	return parseReport(string(out))
}

// cpusOf returns the CPU lists of OSlets ks, from one status call.
func (r *Runner) cpusOf(ctx context.Context, ks ...int) ([]string, error) {
	sts, err := r.Client.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("bench: status: %w", err)
	}
	up := map[int]string{}
	for _, st := range sts {
		if st.Up {
			up[st.Index] = st.CPUs
		}
	}
	cpus := make([]string, len(ks))
	for n, k := range ks {
		var ok bool
		if cpus[n], ok = up[k]; !ok {
			return nil, fmt.Errorf("bench: oslet %d: %w", k, smpc.ErrDown)
		}
	}
	return cpus, nil
}

// succeed turns an exit status that is not 0 into an error.
func succeed(st smpc.ExitStatus, err error) error {
	if err != nil {
		return err
	}
	if st.ShellCode() != 0 {
		return fmt.Errorf("exited with %s", st)
	}
	return nil
}

// timeNative runs a program n times, one after the other, and returns the
// time of one run.
func timeNative(n int, name string, args ...string) (float64, error) {
	start := time.Now()
	for i := 0; i < n; i++ {
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			return 0, fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
		}
	}
	return perOp(time.Since(start), n), nil
}

func perOp(d time.Duration, n int) float64 { return float64(d.Nanoseconds()) / float64(n) }

func exitDetail(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
	}
	return err
}

// parseReport reads a helper's "count nanoseconds" line.
func parseReport(line string) (count, ns float64, err error) {
	f := strings.Fields(line)
	if len(f) == 2 {
		count, err1 := strconv.ParseFloat(f[0], 64)
		ns, err2 := strconv.ParseFloat(f[1], 64)
		if err1 == nil && err2 == nil && ns > 0 {
			return count, ns, nil
		}
	}
	return 0, 0, fmt.Errorf("helper reported %q, not \"count nanoseconds\"", strings.TrimSpace(line))
}
