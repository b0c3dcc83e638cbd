// Command smpcd is the boot firmware of an SMP cluster: it boots and stops
// clusters, and is the binary of each cluster's PID 1 and of each OSlet's
// init. Users run it through smpc boot and smpc shutdown, which execute it;
// it also takes every command smpc takes.
package main

import (
	"os"

	"github.com/smpc-cluster/smpc/internal/smpcd"
)

func main() { os.Exit(smpcd.Run(os.Args[1:])) }
