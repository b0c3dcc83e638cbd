package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/smpc-cluster/smpc/internal/plan"
)

// ExecPlaced times starting /bin/true (fork, and execve until the new image
// is in place) from a process under a spreading launch policy, whose every
// exec its OSlet's init traps and places on an OSlet before the program
// runs, beside the same from a process of the default policy on the same
// OSlet: what the seed's inherited attribute costs an exec. The program's
// run, exit and wait are left out: a placed program spends them on another
// OSlet's CPU, which is the point of placing it.
func (r *Runner) ExecPlaced(ctx context.Context, d time.Duration) (Result, error) {
	a, _, err := r.pair()
	if err != nil {
		return Result{}, err
	}
	loop := []string{"exec-loop", "--for", d.String()}
	run := func(policy string) (float64, error) {
		cmd := r.Client.Command(r.Binary, append([]string{"bench-helper"}, loop...)...)
		cmd.OSlet, cmd.Policy = a, policy
		report, err := r.start(ctx, cmd)
		if err != nil {
			return 0, err
		}
		count, ns, err := report()
		if err != nil {
			return 0, err
		}
		return ns / count, nil
	}
	var placed, plain float64
	for i := 0; i < LoopReps; i++ {
		p, err := run("round-robin")
		if err != nil {
			return Result{}, fmt.Errorf("bench exec-placed: under round-robin on oslet %d: %w", a, err)
		}
		q, err := run("")
		if err != nil {
			return Result{}, fmt.Errorf("bench exec-placed: on oslet %d: %w", a, err)
		}
		placed, plain = minPositive(placed, p), minPositive(plain, q)
	}
	return compareExtra("exec-placed",
		Measure{fmt.Sprintf("fork+exec of /bin/true under round-robin, from oslet %d", a), placed, "ns/op"},
		Measure{fmt.Sprintf("fork+exec of /bin/true, local policy, oslet %d", a), plain, "ns/op"}, 50*time.Microsecond), nil
}

// compareExtra is compare for a cost whose target is an added time rather
// than a ratio.
func compareExtra(name string, s, n Measure, extra time.Duration) Result {
	r := compare(name, s, n, 0)
	met := s.Value-n.Value <= float64(extra.Nanoseconds())
	r.Target, r.Met = fmt.Sprintf("<= +%v", extra), &met
	return r
}

// ErrNoCompiler says that the build benchmark has no gcc or make to run.
var ErrNoCompiler = errors.New("bench build: needs gcc and make")

// Build times an unmodified 'make -jN' of a generated tree of C files,
// compiled by gcc, started under least-loaded on the first OSlet so that
// its recipes spread over every OSlet (N is the cluster's CPU count),
// beside the same make on the host pinned to the same CPUs: the seed's
// "amazingly fast kernel builds". The ratio is the host's wall time over
// the cluster's, so higher is better.
func (r *Runner) Build(ctx context.Context, files int) (Result, error) {
	for _, tool := range []string{"gcc", "make"} {
		if _, err := exec.LookPath(tool); err != nil {
			return Result{}, fmt.Errorf("%w (%v)", ErrNoCompiler, err)
		}
	}
	a, _, err := r.pair()
	if err != nil {
		return Result{}, err
	}
	cpus, err := r.cpusOf(ctx, r.Client.OSlets()...)
	if err != nil {
		return Result{}, err
	}
	all := strings.Join(cpus, ",")
	ncpu := 0
	for _, c := range cpus {
		set, err := plan.ParseSet(c)
		if err != nil {
			return Result{}, fmt.Errorf("bench build: %w", err)
		}
		ncpu += len(set)
	}
	// Not under /tmp, which each OSlet has its own of.
	dir, err := os.MkdirTemp("/var/tmp", "smpc-bench-build-")
	if err != nil {
		return Result{}, fmt.Errorf("bench build: %w", err)
	}
	defer os.RemoveAll(dir)
	if err := writeBuildTree(dir, files); err != nil {
		return Result{}, fmt.Errorf("bench build: %w", err)
	}
	build := []string{"run-cmd", "make", "-s", "-j", strconv.Itoa(ncpu), "-C", dir}
	clean := func() error { return exec.Command("make", "-s", "-C", dir, "clean").Run() }
	var spread, host float64
	for i := 0; i < 2; i++ {
		if err := clean(); err != nil {
			return Result{}, fmt.Errorf("bench build: clean: %w", err)
		}
		cmd := r.Client.Command(r.Binary, append([]string{"bench-helper"}, build...)...)
		cmd.OSlet, cmd.Policy = a, "least-loaded"
		report, err := r.start(ctx, cmd)
		if err != nil {
			return Result{}, fmt.Errorf("bench build: under least-loaded: %w", err)
		}
		_, ns, err := report()
		if err != nil {
			return Result{}, fmt.Errorf("bench build: under least-loaded: %w", err)
		}
		spread = minPositive(spread, ns)
		if err := clean(); err != nil {
			return Result{}, fmt.Errorf("bench build: clean: %w", err)
		}
		_, ns, err = r.helperPinned(ctx, all, build...)
		if err != nil {
			return Result{}, fmt.Errorf("bench build: on the host: %w", err)
		}
		host = minPositive(host, ns)
	}
	// As rates (builds per second), so that higher is better on both.
	return compare("build",
		Measure{fmt.Sprintf("make -j%d of %d C files under least-loaded, %d oslets", ncpu, files, len(cpus)), 1e9 / spread, "builds/s"},
		Measure{fmt.Sprintf("make -j%d on the host, CPUs %s", ncpu, all), 1e9 / host, "builds/s"}, 0.9), nil
}

// writeBuildTree writes files C sources, each some work for the compiler's
// optimiser, and a Makefile that knows nothing of smpc.
func writeBuildTree(dir string, files int) error {
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return err
	}
	for i := 0; i < files; i++ {
		var b strings.Builder
		fmt.Fprintf(&b, "#include <string.h>\n#include <stdlib.h>\n\n")
		for f := 0; f < 12; f++ {
			fmt.Fprintf(&b, "static int table%d_%d[64];\n", i, f)
			fmt.Fprintf(&b, "int work%d_%d(int n, const char *s) {\n\tint acc = %d;\n", i, f, i+f)
			fmt.Fprintf(&b, "\tfor (int k = 0; k < n; k++) {\n\t\tacc = acc * 31 + s[k %% (strlen(s) + 1)];\n")
			fmt.Fprintf(&b, "\t\ttable%d_%d[k & 63] ^= acc;\n\t\tif (acc %% 7 == %d) acc += abs(table%d_%d[(k * 5) & 63]);\n\t}\n", i, f, f%7, i, f)
			fmt.Fprintf(&b, "\tswitch (acc & 7) {\n\tcase 0: return acc;\n\tcase 1: return acc + %d;\n\tcase 2: return acc ^ %d;\n\tdefault: return -acc;\n\t}\n}\n\n", f, i)
		}
		if err := os.WriteFile(filepath.Join(src, fmt.Sprintf("f%03d.c", i)), []byte(b.String()), 0o644); err != nil {
			return err
		}
	}
	mk := "OBJS := $(patsubst %.c,%.o,$(wildcard src/*.c))\n" +
		"all: $(OBJS)\n" +
		"%.o: %.c\n\tgcc -O2 -c $< -o $@\n" +
		"clean:\n\trm -f $(OBJS)\n" +
		".PHONY: all clean\n"
	return os.WriteFile(filepath.Join(dir, "Makefile"), []byte(mk), 0o644)
}

// runCmd runs a command to its end and reports one run and its time.
func runCmd(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("usage: run-cmd PROGRAM [ARGS...]")
	}
	cmd := exec.Command(fs.Arg(0), fs.Args()[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w", strings.Join(fs.Args(), " "), err)
	}
	report(1, time.Since(start))
	return nil
}
