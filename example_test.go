package smpc_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/smpc-cluster/smpc"
)

// Start a command on OSlet 2 with this process's output, and wait for it.
// From the host this needs a running cluster (smpc boot); inside an OSlet it
// needs nothing.
func Example() {
	c, err := smpc.Connect("") // $SMPC_STATE_DIR or /run/smpc on the host
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	cmd := c.Command("uname", "-n")
	cmd.OSlet = 2
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	st, err := cmd.Run(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("pid", cmd.PID, st)
}
