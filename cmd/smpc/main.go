// Command smpc boots an SMP cluster on this machine, runs its OSlets' inits,
// and is the command line that users and scripts drive it with.
package main

import (
	"os"

	"github.com/smpc-cluster/smpc/internal/cli"
)

func main() { os.Exit(cli.Run(os.Args[1:])) }
