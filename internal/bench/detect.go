package bench

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/smpc-cluster/smpc"
	"github.com/smpc-cluster/smpc/internal/statedir"
)

// Detection measures how soon the rest of a cluster knows that an OSlet
// failed: one whose init died, and one whose init is alive but stopped
// (hung). It boots a cluster of two OSlets of its own for each, since the
// measure ends an OSlet. The time runs from the signal to the moment a
// process on the other OSlet is told, by its own init, that the OSlet is
// down.
type Detection struct {
	Binary   string // the smpc binary, booted and run as helper
	StateDir string // where it boots its clusters
}

// The bounds the design promises (docs/failure.md): an init's death is
// seen at once, from its closed channels; a hung init within three missed
// heartbeats of a call that waits on it (the helper's status call; the
// clock starts at the signal, just before that call).
const (
	deathBound = 500 * time.Millisecond
	hangBound  = 5 * time.Second
)

// Run measures both kinds of failure.
func (d *Detection) Run(ctx context.Context) ([]Result, error) {
	var out []Result
	for _, f := range []struct {
		name, what string
		sig        syscall.Signal
		bound      time.Duration
	}{
		{"detect-death", "OSlet 1 told OSlet 2 is down, after its init is killed", syscall.SIGKILL, deathBound},
		{"detect-hang", "OSlet 1 told OSlet 2 is not answering, after its init is stopped", syscall.SIGSTOP, hangBound},
	} {
		took, err := d.one(ctx, f.sig)
		if err != nil {
			return out, fmt.Errorf("bench %s: %w", f.name, err)
		}
		met := took <= f.bound
		out = append(out, Result{Name: f.name, SMPC: Measure{f.what, float64(took.Nanoseconds()), "ns"},
			Target: "<= " + f.bound.String(), Met: &met})
	}
	return out, nil
}

// one boots a cluster, has a helper on OSlet 1 watch OSlet 2, signals
// OSlet 2's init with sig, and returns how long the helper took to learn.
func (d *Detection) one(ctx context.Context, sig syscall.Signal) (time.Duration, error) {
	_, shutdown, err := Boot(ctx, d.Binary, d.StateDir, "--oslets", "2", "--cpus-per-oslet", "1")
	if err != nil {
		return 0, err
	}
	defer shutdown()
	rec, err := statedir.ReadRecord(d.StateDir)
	if err != nil {
		return 0, err
	}
	init2 := rec.Inits[2]
	if sig == syscall.SIGSTOP {
		defer syscall.Kill(init2, syscall.SIGCONT) // so that shutdown finds it
	}
	c, err := smpc.Connect(d.StateDir)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	r := &Runner{Client: c, Binary: d.Binary}
	cmd := c.Command(d.Binary, "bench-helper", "detect-down", "--of", "2", "--stamp", "/gtmp/detect-stamp")
	cmd.OSlet = 1
	report, err := r.start(ctx, cmd)
	if err != nil {
		return 0, err
	}
	// The helper is watching; the stamp, written whole, starts its clock.
	stamp := filepath.Join(rec.GTmp, "detect-stamp")
	if err := os.WriteFile(stamp+".new", []byte(strconv.FormatInt(time.Now().UnixNano(), 10)), 0o644); err != nil {
		return 0, err
	}
	if err := os.Rename(stamp+".new", stamp); err != nil {
		return 0, err
	}
	if err := syscall.Kill(init2, sig); err != nil {
		return 0, fmt.Errorf("signal oslet 2's init: %w", err)
	}
	_, ns, err := report()
	return time.Duration(ns), err
}

// detectDown waits for the stamp file, then asks its own init for the
// cluster's status until OSlet --of is down, and reports the time from the
// stamp's.
func detectDown(fs *flag.FlagSet, args []string) error {
	of := fs.Int("of", 2, "the OSlet to watch")
	stampPath := fs.String("stamp", "", "the file whose time, in Unix nanoseconds, starts the clock")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := smpc.Connect("")
	if err != nil {
		return err
	}
	defer c.Close()
	var start int64
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Millisecond) {
		if b, err := os.ReadFile(*stampPath); err == nil {
			if start, err = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err != nil {
				return fmt.Errorf("stamp %s: %w", *stampPath, err)
			}
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no stamp at %s", *stampPath)
		}
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		st, err := c.Status(context.Background())
		if err != nil {
			return err
		}
		for _, o := range st {
			if o.Index == *of && !o.Up {
				report(1, time.Duration(time.Now().UnixNano()-start))
				return nil
			}
		}
	}
	return fmt.Errorf("oslet %d still up after 30 s", *of)
}
