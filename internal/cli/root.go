// Package cli is the smpc command line: one file per sub-command, each a thin
// layer over the smpc package and the plan. It links none of the boot
// firmware, so that a command (a make recipe's smpc run, say) starts about as
// fast as any small static program: smpcd, the firmware's binary, adds boot
// and shutdown to this same command line.
package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/smpc-cluster/smpc"
	"github.com/smpc-cluster/smpc/internal/bench"
	"github.com/smpc-cluster/smpc/internal/trap"
)

// exitError carries an exit status out of a command.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

var stateDir string

// StateDir is the --state-dir flag's value: "" for $SMPC_STATE_DIR or the
// default.
func StateDir() string { return stateDir }

// Run runs the smpc command line and returns its exit status. The smpc
// binary passes no firmware: its boot and shutdown commands execute smpcd,
// the boot firmware, with the same arguments (see forward.go). smpcd passes
// its own boot and shutdown, which replace them.
func Run(args []string, firmware ...*cobra.Command) int {
	if len(args) > 0 && args[0] == trap.ExecStage {
		// An init starts a process whose system calls it answers this way.
		err := trap.ExecTrapped(args[1:])
		fmt.Fprintf(os.Stderr, "smpc %s: %v\n", trap.ExecStage, err)
		return 1
	}
	if len(args) > 0 && args[0] == "bench-helper" {
		// smpc bench starts its helper processes this way.
		return bench.Helper(args[1:])
	}
	root := &cobra.Command{
		Use:   "smpc",
		Short: "SMP Clusters: one machine partitioned into OSlets that look like one system",
		Long: `smpc partitions this machine's CPUs and memory into OSlets, each with its own
cgroup, mounts, network and init, and joins them back into one system: every
OSlet shares the cluster's one PID namespace and one System V IPC namespace,
so every program sees, signals and waits for every process, and uses every
message queue, semaphore set and shared memory segment, whatever OSlet it runs
on. A process can be started on any OSlet, or spread by a launch policy.

The state dir (default /run/smpc, or $SMPC_STATE_DIR, or --state-dir) names the
cluster on the host. Inside an OSlet, smpc finds its own OSlet with no flag.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&stateDir, "state-dir", "", "the cluster's state dir (default $SMPC_STATE_DIR or /run/smpc)")
	if len(firmware) == 0 {
		firmware = []*cobra.Command{forwardCmd("boot", BootShort), forwardCmd("shutdown", ShutdownShort)}
	}
	root.AddCommand(firmware...)
	root.AddCommand(planCmd(), statusCmd(), psCmd(), runCmd(), killCmd(), waitCmd(), msgCmd(), semCmd(), ipcsCmd(), ipcrmCmd(), shmCmd(), portsCmd(), devicesCmd(), benchCmd())
	root.SetArgs(args)
	err := root.Execute()
	var ee exitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.code
	}
	fmt.Fprintln(os.Stderr, "smpc:", err)
	return 1
}

func connect() (*smpc.Client, error) { return smpc.Connect(stateDir) }

// withClient connects to the cluster, runs f, and closes the connection.
func withClient(f func(c *smpc.Client) error) error {
	c, err := connect()
	if err != nil {
		return err
	}
	defer c.Close()
	return f(c)
}

// printList writes items as one line of JSON (an empty list as []), or as a
// table: header, then a line that row makes for each item, columns
// separated by tabs.
func printList[T any](w io.Writer, asJSON bool, items []T, header string, row func(T) string) error {
	if asJSON {
		if items == nil {
			items = []T{}
		}
		return json.NewEncoder(w).Encode(items)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, it := range items {
		fmt.Fprintln(tw, row(it))
	}
	return tw.Flush()
}

// orDash shows an empty field as "-".
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// checkOSlet refuses an OSlet flag given as 0 or less, which would else
// read as the flag's "unset" and pick an OSlet silently.
func checkOSlet(cmd *cobra.Command, flag string, k int) error {
	if cmd.Flags().Changed(flag) && k < 1 {
		return fmt.Errorf("--%s %d: OSlets are numbered from 1 ('smpc status' lists them)", flag, k)
	}
	return nil
}
