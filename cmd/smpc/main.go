// Command smpc is the command line of an SMP cluster, for users, scripts and
// every OSlet's processes: it starts, signals, waits for and lists processes
// on any OSlet, and uses the cluster's IPC. Its boot and shutdown execute
// smpcd, the boot firmware, which must be installed beside it or on PATH.
package main

import (
	"os"

	"github.com/smpc-cluster/smpc/internal/cli"
)

func main() { os.Exit(cli.Run(os.Args[1:])) }
