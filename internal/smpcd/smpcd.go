// Package smpcd is the command line of smpcd, the boot firmware's binary:
// smpc's own command line (package cli) with the commands that boot and
// stop a cluster, and the hidden ones by which the firmware starts the
// cluster's PID 1 and each OSlet's init. It is a binary of its own because
// the firmware links the cgroup, netlink, nftables, eBPF and FUSE libraries,
// whose start-up a command that a make recipe runs must not pay.
package smpcd

import (
	"fmt"
	"os"

	"github.com/smpc-cluster/smpc/internal/cli"
	"github.com/smpc-cluster/smpc/internal/cluster"
	"github.com/smpc-cluster/smpc/internal/oslet"
)

// Run runs smpcd's command line and returns its exit status.
func Run(args []string) int {
	if len(args) > 0 && args[0] == oslet.InitCommand {
		// The boot firmware starts inits this way; it is no user command.
		if err := oslet.Main(); err != nil {
			fmt.Fprintln(os.Stderr, "smpcd "+oslet.InitCommand+":", err)
			return 1
		}
		return 0
	}
	if len(args) > 0 && args[0] == cluster.ReaperCommand {
		// The boot firmware starts the cluster's PID 1 this way.
		if err := cluster.ReaperMain(); err != nil {
			fmt.Fprintln(os.Stderr, "smpcd "+cluster.ReaperCommand+":", err)
		}
		return 1
	}
	return cli.Run(args, bootCmd(), shutdownCmd())
}
