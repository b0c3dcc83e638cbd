package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"text/tabwriter"

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
				if asJSON {
					return json.NewEncoder(cmd.OutOrStdout()).Encode(st)
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "OSLET\tSTATE\tADDRESS\tCPUS\tMEMORY\tUSED\tPROCS\tLOAD\tQUEUE\tPROTOCOL")
				for _, o := range st {
					if !o.Up {
						fmt.Fprintf(tw, "%d\tdown\t-\t-\t-\t-\t-\t-\t-\t-\n", o.Index)
						continue
					}
					fmt.Fprintf(tw, "%d\tup\t%s\t%s\t%s\t%s\t%d\t%.2f\t%d\t%s\n", o.Index, orDash(o.Address), o.CPUs, plan.FormatBytes(o.MemoryLimit),
						plan.FormatBytes(o.MemoryUsed), o.Processes, o.Load, o.Queue, o.Protocol)
				}
				return tw.Flush()
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
				if asJSON {
					if err := json.NewEncoder(cmd.OutOrStdout()).Encode(procs); err != nil {
						return err
					}
				} else {
					tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "GPID\tOSLET\tPPID\tUSER\tSTATE\tTIME\tCOMMAND")
					for _, p := range procs {
						fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%s\t%.2f\t%s\n", p.PID, p.OSlet, p.Parent, p.User, p.State, p.CPUTime, p.Command)
					}
					tw.Flush()
				}
				return downError(down)
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
