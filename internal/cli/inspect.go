package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/smpc-cluster/smpc"
	"github.com/smpc-cluster/smpc/internal/plan"
)

func statusCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Describe each OSlet: address, CPUs, memory, processes, load, proxy queue, up or down",
		Long: `Describe each OSlet: its address on the cluster bridge, CPUs, memory limit
and use, processes, the processes its OOM killer has killed (OOM), load
(runnable processes per CPU), the peer requests
waiting in its queue, and the protocol it speaks; --json adds its IPv6
address (address6), the init's PID and the waits blocked there until a
process ends. The exit status is 1 when
an OSlet is down, so that a script can tell a whole cluster from one that
lost an OSlet.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(func(c *smpc.Client) error {
				st, err := c.Status(context.Background())
				if err != nil {
					return err
				}
				err = printList(cmd.OutOrStdout(), asJSON, st, "OSLET\tSTATE\tADDRESS\tCPUS\tMEMORY\tUSED\tPROCS\tOOM\tLOAD\tQUEUE\tPROTOCOL",
					func(o smpc.OSletStatus) string {
						if !o.Up {
							return fmt.Sprintf("%d\tdown\t-\t-\t-\t-\t-\t-\t-\t-\t-", o.Index)
						}
						return fmt.Sprintf("%d\tup\t%s\t%s\t%s\t%s\t%d\t%d\t%.2f\t%d\t%s", o.Index, orDash(o.Address), o.CPUs, plan.FormatBytes(o.MemoryLimit),
							plan.FormatBytes(o.MemoryUsed), o.Processes, o.OOMKills, o.Load, o.Queue, o.Protocol)
					})
				if err != nil {
					return err
				}
				for _, o := range st {
					if !o.Up {
						return exitError{1}
					}
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func psCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ps",
		Short: "List every process of every OSlet",
		Long: `List every process of the cluster: PID (the same number inside every OSlet,
where ps, kill and /proc see every process too), OSlet (the cgroup it runs
in), parent's PID, user, state, CPU time, launch policy and command. A
process that a spreading policy would have moved but did not says why after
its policy. An OSlet that is down is named on standard error, and the exit
status is 1.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(func(c *smpc.Client) error {
				procs, down, err := c.Processes(context.Background())
				if err != nil {
					return err
				}
				err = printList(cmd.OutOrStdout(), asJSON, procs, "PID\tOSLET\tPPID\tUSER\tSTATE\tTIME\tPOLICY\tCOMMAND",
					func(p smpc.Process) string {
						policy := orDash(p.Policy)
						if p.Note != "" {
							policy += " (" + p.Note + ")"
						}
						return fmt.Sprintf("%d\t%d\t%d\t%s\t%s\t%.2f\t%s\t%s", p.PID, p.OSlet, p.Parent, p.User, p.State, p.CPUTime, policy, printable(p.Command))
					})
				return errors.Join(err, downError(down))
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// printable shows the control characters of a command line (a script
// passed with -c has newlines) as '?', as ps(1) does, so that each
// process stays one line of the table.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return '?'
		}
		return r
	}, s)
}
