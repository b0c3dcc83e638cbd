package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/docker/go-units"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc"
	"github.com/smpc-cluster/smpc/internal/bench"
	"github.com/smpc-cluster/smpc/internal/statedir"
)

func benchCmd() *cobra.Command {
	var asJSON, scaling, failure bool
	var sz bench.Sizes
	var bytes string
	var roundTime time.Duration
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure cross-OSlet operations beside the native operations they stand for (root)",
		Long: `Measure what the single-system image costs. Each figure is set beside the
native Linux operation it stands for, both measured in this run, with their
ratio and the design's target:

  null-call     a null call between two OSlets / a Unix-socket ping-pong
  spawn         create /bin/true on another OSlet and wait, through the Go
                package / fork, exec and wait here
  run-command   the whole 'smpc run --on K -- /bin/true' / the start of a
                static Go program that only exits (built with go, when
                there is one; else /bin/true) plus a spawn+wait through the
                Go package
  signal-wait   kill and wait for a process on another OSlet / on the same
  pipe          pipe throughput between two OSlets / within one
  msg-pingpong  a System V message round trip between two OSlets (the
                cluster's IPC namespace) / two host processes on the same
                CPUs (the host's)
  semop         a semaphore operation on a set of the cluster's, in an
                OSlet / on a set of the host's, on the same CPUs
  exec-placed   fork, exec and wait of /bin/true under a spreading policy,
                each exec placed by the OSlet's init / with the default
                policy (target: at most 50 µs more)
  build         an unmodified make -jN of 200 C files (gcc) under
                least-loaded over every OSlet / the same make on the host
                on the same CPUs, as builds per second (when gcc and make
                are installed; --build-files 0 leaves it out)
  net-throughput, net-connect
                a transfer and new connections from the host through the
                cluster's port on 127.0.0.1 to a server on OSlet 2 / to the
                same server on the host, on the same CPUs
  net-requests, net-oslet-requests
                4 KiB requests and replies on one connection, from the host
                through 127.0.0.1 and from OSlet 1 through localhost, to a
                server on OSlet 2 / the same pair on the host's loopback
  net-oslet-face-throughput, net-oslet-face-connect
                from OSlet 1 through smpc-cluster / straight to oslet-2
  net-loopback-relay-throughput, net-loopback-relay-connect
                to a server bound to OSlet 2's 127.0.0.1, through its relay
                / the host's own server on its loopback
  net-throughput6
                net-throughput over IPv6: through the cluster's port on ::1
                / the host's server on its ::1 (when the cluster has IPv6)
  rdev-read     reading a device of another OSlet through /rdev with
                direct device opens (smpc run --direct-devices) / on its
                owner; rdev-read-fuse the same through /rdev's FUSE files;
                rdev-open-trap an open with direct device opens / without
                (only when an OSlet owns a block device it can open)
  cpu-loop      a CPU-bound loop in an OSlet / on the host, same CPUs
  syscall-loop  getpid and 64-byte reads in an OSlet / on the host

It uses the cluster of the state dir when one runs there (or the caller's own,
inside an OSlet), and otherwise boots one for the run and shuts it down after.

--scaling also boots clusters of 1, 2, 4 and 8 OSlets of equal size (as many
as this machine holds) and measures each one's boot time, its idle cost (the
CPU its boot process, PID 1 and inits use while nothing runs, per OSlet,
beside zero: an OSlet must not slow its own work) and its aggregate rates,
every OSlet creating processes on, then calling, the next: the seed's goal of
linear scalability. --failure boots two clusters of 2 OSlets and
times how soon OSlet 1 is told that OSlet 2 is down, once after OSlet 2's
init is killed (detect-death) and once after it is stopped (detect-hang).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			n, err := units.RAMInBytes(bytes)
			if err != nil || n <= 0 {
				return fmt.Errorf("--bytes %q: not a positive byte count", bytes)
			}
			sz.PipeBytes = n
			if sz.Calls < 20 {
				return fmt.Errorf("--calls %d: give at least 20", sz.Calls)
			}
			exe, err := benchBinary()
			if err != nil {
				return err
			}
			ctx := context.Background()
			progress := func(r bench.Result) {
				if isTerminal(os.Stderr) {
					fmt.Fprintf(os.Stderr, "smpc bench: %s done\n", r.Name)
				}
			}
			c, dir, stop, err := benchCluster(ctx, exe)
			if err != nil {
				return err
			}
			if (scaling || failure) && c.Self() != 0 {
				c.Close()
				return errors.New("bench --scaling and --failure boot clusters: run them from the host")
			}
			r := &bench.Runner{Client: c, Binary: exe, StateDir: dir}
			results, err := r.All(ctx, sz, progress)
			c.Close()
			stop()
			if err == nil && scaling {
				sizes, per := bench.DefaultSizes(runtime.NumCPU())
				s := &bench.Scaling{Binary: exe, StateDir: fmt.Sprintf("/run/smpc-bench-scaling-%d", os.Getpid()),
					Sizes: sizes, CPUsPerOSlet: per, For: roundTime}
				var more []bench.Result
				more, err = s.Run(ctx)
				results = append(results, more...)
			}
			if err == nil && failure {
				d := &bench.Detection{Binary: exe, StateDir: fmt.Sprintf("/run/smpc-bench-failure-%d", os.Getpid())}
				var more []bench.Result
				more, err = d.Run(ctx)
				results = append(results, more...)
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if jerr := enc.Encode(struct {
					Results []bench.Result `json:"results"`
				}{results}); jerr != nil {
					return jerr
				}
			} else {
				bench.Print(cmd.OutOrStdout(), results)
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the results as JSON")
	cmd.Flags().IntVarP(&sz.Calls, "calls", "n", bench.DefaultCalls, "null calls per side; spawns and kills are a quarter of it")
	cmd.Flags().StringVar(&bytes, "bytes", "1G", "bytes through each pipe (K, M and G suffixes)")
	cmd.Flags().DurationVar(&sz.LoopTime, "loop-time", bench.DefaultLoopTime, "how long each run of a loop lasts")
	cmd.Flags().IntVar(&sz.BuildFiles, "build-files", bench.DefaultBuildFiles, "C files in the build benchmark's tree (0: no build benchmark)")
	cmd.Flags().BoolVar(&scaling, "scaling", false, "also boot clusters of 1, 2, 4 and 8 OSlets and measure how rates scale")
	cmd.Flags().BoolVar(&failure, "failure", false, "also boot clusters of 2 OSlets and time how soon one OSlet learns that the other died, or hung")
	cmd.Flags().DurationVar(&roundTime, "round-time", time.Second, "how long each scaling round lasts")
	return cmd
}

// benchBinary returns this smpc binary, which the benchmarks run as their
// helpers, in OSlets too.
func benchBinary() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("bench: find the smpc binary: %w", err)
	}
	if exe, err = filepath.EvalSymlinks(exe); err != nil {
		return "", fmt.Errorf("bench: find the smpc binary: %w", err)
	}
	if strings.HasPrefix(exe, "/tmp/") {
		return "", fmt.Errorf("bench: the smpc binary is %s, but /tmp is private to each OSlet, where its helpers run: put it elsewhere", exe)
	}
	return exe, nil
}

// benchCluster connects to the cluster that runs at the state dir, or boots
// one for the run. stop shuts down what it booted.
func benchCluster(ctx context.Context, exe string) (c *smpc.Client, dir string, stop func(), err error) {
	c, err = connect()
	if err == nil {
		if err = c.Ping(ctx, 0); err == nil {
			if c.Self() == 0 {
				dir, _ = statedir.Resolve(stateDir)
			}
			return c, dir, func() {}, nil
		}
		c.Close()
	}
	if os.Geteuid() != 0 {
		return nil, "", nil, fmt.Errorf("bench: no cluster runs at the state dir, and booting one needs root: %w", err)
	}
	dir = "/run/smpc-bench-" + strconv.Itoa(os.Getpid())
	fmt.Fprintf(os.Stderr, "smpc bench: no cluster is running; booting one at %s for the run\n", dir)
	if _, stop, err = bench.Boot(ctx, exe, dir); err != nil {
		return nil, "", nil, fmt.Errorf("bench: %w", err)
	}
	if c, err = smpc.Connect(dir); err != nil {
		stop()
		return nil, "", nil, err
	}
	return c, dir, stop, nil
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
