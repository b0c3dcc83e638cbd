package cli

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/smpc-cluster/smpc"
	"github.com/smpc-cluster/smpc/internal/plan"
)

func statusCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Describe each OSlet: address, CPUs, memory, processes, load, proxy queue, up or down",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(func(c *smpc.Client) error {
				st, err := c.Status(context.Background())
				if err != nil {
					return err
				}
				return printList(cmd.OutOrStdout(), asJSON, st, "OSLET\tSTATE\tADDRESS\tCPUS\tMEMORY\tUSED\tPROCS\tLOAD\tQUEUE\tPROTOCOL",
					func(o smpc.OSletStatus) string {
						if !o.Up {
							return fmt.Sprintf("%d\tdown\t-\t-\t-\t-\t-\t-\t-\t-", o.Index)
						}
						return fmt.Sprintf("%d\tup\t%s\t%s\t%s\t%s\t%d\t%.2f\t%d\t%s", o.Index, orDash(o.Address), o.CPUs, plan.FormatBytes(o.MemoryLimit),
							plan.FormatBytes(o.MemoryUsed), o.Processes, o.Load, o.Queue, o.Protocol)
					})
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
		Short: "List every process of every OSlet, with global PIDs",
		Long: `List every process of the cluster: global PID (OSlet k's local PID p is
k*4194304+p), OSlet, parent's global PID, user, state, CPU time and command.
An OSlet that is down is named on standard error, and the exit status is 1.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(func(c *smpc.Client) error {
				procs, down, err := c.Processes(context.Background())
				if err != nil {
					return err
				}
				err = printList(cmd.OutOrStdout(), asJSON, procs, "GPID\tOSLET\tPPID\tUSER\tSTATE\tTIME\tCOMMAND",
					func(p smpc.Process) string {
						return fmt.Sprintf("%d\t%d\t%d\t%s\t%s\t%.2f\t%s", p.PID, p.OSlet, p.Parent, p.User, p.State, p.CPUTime, p.Command)
					})
				return errors.Join(err, downError(down))
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
