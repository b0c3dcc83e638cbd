package cli

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/smpc-cluster/smpc"
)

func devicesCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "devices",
		Short: "List the cluster's devices by owner, and where other OSlets reach them (/rdev/K/NAME)",
		Long: `List every device that belongs to an OSlet: the block and character devices
the plan gives each OSlet (smpc boot --device K=NAME), and the host's block
devices, which stay with OSlet 1 unless given away.

An OSlet's own devices are in its /dev. Every OSlet reaches OSlet K's device
NAME as /rdev/K/NAME: opening it waits until K has checked the caller's
credentials against the device's owner and mode, then the caller holds the
device itself, so dd, cat, mkfs and fdisk work on it unmodified and at native
speed. An OSlet's devices cgroup keeps it from opening another OSlet's device
any other way. An OSlet that is down is named on standard error, and the exit
status is 1.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(func(c *smpc.Client) error {
				devs, down, err := c.Devices(context.Background())
				if err != nil {
					return err
				}
				err = printList(cmd.OutOrStdout(), asJSON, devs, "OSLET\tNAME\tTYPE\tNUMBERS\tOWNER\tMODE\tPATH",
					func(d smpc.Device) string {
						return fmt.Sprintf("%d\t%s\t%s\t%d:%d\t%d:%d\t%04o\t/rdev/%d/%s", d.OSlet, d.Name, d.Type, d.Major, d.Minor, d.UID, d.GID, d.Mode, d.OSlet, d.Name)
					})
				return errors.Join(err, downError(down))
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
