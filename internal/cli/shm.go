package cli

import (
	"context"
	"fmt"
	"strconv"

	units "github.com/docker/go-units"
	"github.com/spf13/cobra"

	"github.com/smpc-cluster/smpc"
	"github.com/smpc-cluster/smpc/internal/ipc"
	"github.com/smpc-cluster/smpc/internal/plan"
	"github.com/smpc-cluster/smpc/internal/vproc"
)

func shmCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "shm",
		Short: "Create, list and remove named shared memory, one /dev/shm for every OSlet",
		Long: `Every OSlet mounts the same tmpfs on /dev/shm (on the host it is the state
dir's shm/), so shm_open(3) and MAP_SHARED mappings share pages across OSlets.
'smpc shm create' makes an object with a home OSlet, whose init allocates (and
with --pinned locks) its pages, so they count against the home's memory.`,
	}
	cmd.AddCommand(shmCreateCmd(), shmLsCmd(), shmRmCmd())
	return cmd
}

func shmCreateCmd() *cobra.Command {
	var on int
	var pinned bool
	var mode string
	cmd := &cobra.Command{
		Use:   "create NAME SIZE",
		Short: "Make a shared memory object of SIZE bytes (K, M, G suffixes) homed on an OSlet",
		Long: `Make /dev/shm/NAME, SIZE bytes (such as 64M), owned by the caller with --mode.
Its home (--on, or one chosen by hashing NAME) allocates the pages, which count
against the home's memory; a size past the home's free memory is refused.
--pinned locks the pages in memory at the home until 'smpc shm rm'.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			size, err := units.RAMInBytes(args[1])
			if err != nil || size <= 0 {
				return fmt.Errorf("bad size %q (bytes, or with K, M, G)", args[1])
			}
			perm, err := parseMode(mode)
			if err != nil {
				return err
			}
			if err := checkOSlet(cmd, "on", on); err != nil {
				return err
			}
			return withClient(func(c *smpc.Client) error {
				f, err := c.ShmCreate(context.Background(), args[0], size, smpc.ShmOptions{On: on, Pinned: pinned, Mode: uint32(perm)})
				if err != nil {
					return err
				}
				return f.Close()
			})
		},
	}
	cmd.Flags().IntVar(&on, "on", 0, "home OSlet (default: chosen by hashing the name)")
	cmd.Flags().BoolVar(&pinned, "pinned", false, "lock the pages in memory at the home")
	cmd.Flags().StringVar(&mode, "mode", "0600", "permission bits (octal)")
	return cmd
}

func shmLsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the cluster's shared memory objects: size, owner, mode, home OSlet",
		Long: `List every object in the cluster's /dev/shm. HOME is the OSlet that holds its
pages; "-" marks an object a program made with shm_open, whose pages count
against the OSlet of whoever touched each first.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(func(c *smpc.Client) error {
				list, err := c.ShmList(context.Background())
				if err != nil {
					return err
				}
				return printList(cmd.OutOrStdout(), asJSON, list, "NAME\tSIZE\tOWNER\tPERMS\tHOME\tPINNED", func(o smpc.ShmInfo) string {
					home := "-"
					if o.Home != 0 {
						home = strconv.Itoa(o.Home)
					}
					return fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%v", o.Name, plan.FormatBytes(o.Size), vproc.UserName(o.UID), ipc.ModeString(o.Mode), home, o.Pinned)
				})
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func shmRmCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME...",
		Short: "Remove shared memory objects (their owner or root)",
		Long: `Remove each named object. Processes that have it mapped keep their pages
until they unmap them, as with shm_unlink(3).`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(func(c *smpc.Client) error {
				failed := false
				for _, name := range args {
					if err := c.ShmRemove(context.Background(), name); err != nil {
						fmt.Fprintln(cmd.ErrOrStderr(), "smpc: shm rm:", err)
						failed = true
					}
				}
				if failed {
					return exitError{1}
				}
				return nil
			})
		},
	}
}
