package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"
)

// Sizes sets how long the measurements of All run.
type Sizes struct {
	Calls     int           // null calls, spawns, kills: each side
	PipeBytes int64         // bytes through each pipe
	LoopTime  time.Duration // each run of a loop
	// BuildFiles is how many C files the build benchmark compiles; 0
	// leaves the build out.
	BuildFiles int
}

// DefaultBuildFiles is the size of the build benchmark's tree.
const DefaultBuildFiles = 200

// All runs every benchmark of a booted cluster in turn and hands each result
// to done as it comes.
func (r *Runner) All(ctx context.Context, sz Sizes, done func(Result)) ([]Result, error) {
	one := func(f func() (Result, error)) func() ([]Result, error) {
		return func() ([]Result, error) {
			r, err := f()
			return []Result{r}, err
		}
	}
	steps := []func() ([]Result, error){
		one(func() (Result, error) { return r.NullCall(ctx, sz.Calls) }),
		one(func() (Result, error) { return r.Spawn(ctx, sz.Calls/4) }),
		one(func() (Result, error) { return r.RunCommand(ctx, sz.Calls/20) }),
		one(func() (Result, error) { return r.SignalWait(ctx, sz.Calls/4) }),
		one(func() (Result, error) { return r.MsgPingPong(ctx, sz.Calls) }),
		one(func() (Result, error) { return r.SemOp(ctx, sz.LoopTime) }),
		one(func() (Result, error) { return r.ExecPlaced(ctx, sz.LoopTime) }),
		func() ([]Result, error) {
			if sz.BuildFiles <= 0 {
				return nil, nil
			}
			res, err := r.Build(ctx, sz.BuildFiles)
			if errors.Is(err, ErrNoCompiler) {
				return nil, nil // nothing to build with
			}
			return []Result{res}, err
		},
		func() ([]Result, error) { return r.Pipe(ctx, sz.PipeBytes) },
		func() ([]Result, error) { return r.Network(ctx, sz.PipeBytes/4, sz.LoopTime) },
		func() ([]Result, error) {
			rs, err := r.DeviceRead(ctx, sz.PipeBytes/16, sz.LoopTime)
			if errors.Is(err, ErrNoDevice) {
				return nil, nil // a machine with no block device: nothing to compare
			}
			return rs, err
		},
		one(func() (Result, error) { return r.Local(ctx, "cpu", sz.LoopTime) }),
		one(func() (Result, error) { return r.Local(ctx, "syscall", sz.LoopTime) }),
	}
	var out []Result
	for _, step := range steps {
		rs, err := step()
		if err != nil {
			return out, err
		}
		out = append(out, rs...)
		for _, res := range rs {
			if done != nil {
				done(res)
			}
		}
	}
	return out, nil
}

// Print writes results as a table, one line each.
func Print(w io.Writer, rs []Result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "BENCHMARK\tSMPC\tNATIVE\tRATIO\tTARGET\t\tWHAT (SMPC / NATIVE)")
	for _, r := range rs {
		native, ratio, what := "-", "-", r.SMPC.What
		if r.Native != nil {
			native = r.Native.format()
			ratio = fmt.Sprintf("%.2f", r.Ratio)
			what += " / " + r.Native.What
		}
		target, met := "-", ""
		if r.Target != "" {
			target, met = r.Target, "ok"
			if r.Met != nil && !*r.Met {
				met = "MISSED"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.SMPC.format(), native, ratio, target, met, what)
	}
	return tw.Flush()
}

// format writes a value for a reader: a time for a cost, a rate otherwise.
func (m Measure) format() string {
	switch m.Unit {
	case "ns/op", "ns":
		d := time.Duration(m.Value)
		switch {
		case d >= 10*time.Millisecond:
			d = d.Round(100 * time.Microsecond)
		case d >= 10*time.Microsecond:
			d = d.Round(100 * time.Nanosecond)
		}
		if m.Unit == "ns" {
			return d.String()
		}
		return d.String() + "/op"
	case "MB/s":
		return fmt.Sprintf("%.0f MB/s", m.Value)
	}
	return fmt.Sprintf("%.4g %s", m.Value, m.Unit)
}
