package smpc_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"

	"github.com/smpc-cluster/smpc"
)

// Start a command on OSlet 2 with this process's output, and wait for it.
// From the host this needs a running cluster (smpc boot); inside an OSlet it
// needs nothing. (It has no Output to check, since it needs a cluster; the
// end-to-end tests run the same calls, and the example below runs here.)
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

// Connect says when no cluster runs where the host looks for one, so that a
// program can tell that from a failure of a running cluster.
func ExampleConnect_noCluster() {
	_, err := smpc.Connect("/run/smpc-example-no-such-cluster")
	fmt.Println(errors.Is(err, smpc.ErrNoCluster))
	// Output: true
}
