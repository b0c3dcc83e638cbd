package smpc

import (
	"context"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc/internal/fabric"
)

// Cmd is a process to start on the cluster, in the manner of os/exec.Cmd.
type Cmd struct {
	// Args is the command line; Args[0] is looked up in the PATH of Env.
	Args []string
	// Env is the environment; nil means the caller's.
	Env []string
	// Dir is the working directory; "" means the caller's. It travels as an
	// open descriptor, so it need not be visible on the target OSlet.
	Dir string
	// Stdin, Stdout and Stderr are handed to the process itself as file
	// descriptors; nil means /dev/null.
	Stdin, Stdout, Stderr *os.File
	// ExtraFiles are more descriptors for the process, as in os/exec: entry
	// i becomes descriptor 3+i; a nil entry leaves that number closed. A
	// make's jobserver pipe reaches a recipe on another OSlet this way.
	ExtraFiles []*os.File
	// OSlet is where to start it; 0 lets Policy (or the inherited policy)
	// choose.
	OSlet int
	// Policy is "local", "round-robin" or "least-loaded"; it also becomes
	// the inherited policy of the process and its descendants.
	Policy string
	// Detach starts it with no remote parent, in a session of its own.
	Detach bool
	// AllowSockets overrides the rule that refuses to create, on another
	// OSlet, a process that would inherit a network socket.
	AllowSockets bool
	// DirectDevices gives the process, and its descendants, the owner's own
	// descriptor when it opens /rdev/K/NAME, so that its device I/O runs at
	// native speed; each of its opens then costs a round trip to its
	// OSlet's init. See docs/network.md.
	DirectDevices bool

	// PID is the process's PID in the cluster once Start has returned.
	PID PID

	oslet int // where it started: its init holds its status

	c *Client
}

// Command returns a Cmd that runs name with args.
func (c *Client) Command(name string, args ...string) *Cmd {
	return &Cmd{Args: append([]string{name}, args...), c: c}
}

// Start starts the process and returns once it runs.
func (cmd *Cmd) Start(ctx context.Context) error {
	if cmd.PID != 0 {
		return errors.New("smpc: already started")
	}
	if len(cmd.Args) == 0 {
		return errors.New("smpc: empty command")
	}
	req := fabric.SpawnRequest{On: cmd.OSlet, Policy: cmd.Policy, Argv: cmd.Args, Env: cmd.Env,
		Dir: cmd.Dir, DirFile: fabric.NoFile, Detach: cmd.Detach, AllowSockets: cmd.AllowSockets, DirectDevices: cmd.DirectDevices}
	if req.Env == nil {
		req.Env = os.Environ()
	}
	var files []*os.File
	dir := cmd.Dir
	if dir == "" {
		dir = "."
	}
	if req.Dir == "" {
		req.Dir, _ = os.Getwd()
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open working directory", Path: dir, Err: err}
	}
	dirFile := os.NewFile(uintptr(fd), dir)
	defer dirFile.Close()
	req.DirFile = len(files)
	files = append(files, dirFile)
	for n, f := range append([]*os.File{cmd.Stdin, cmd.Stdout, cmd.Stderr}, cmd.ExtraFiles...) {
		if f != nil {
			req.Fds = append(req.Fds, fabric.FD{Num: n, File: len(files)})
			files = append(files, f)
		}
	}
	if len(files) > fabric.MaxFiles {
		return fmt.Errorf("smpc: %d descriptors to hand over, at most %d travel", len(files)-1, fabric.MaxFiles-1)
	}
	var reply fabric.SpawnReply
	if _, err := cmd.c.call(ctx, cmd.OSlet, fabric.OpSpawn, req, files, &reply); err != nil {
		return err
	}
	cmd.PID, cmd.oslet = PID(reply.PID), reply.OSlet
	return nil
}

// Wait waits for the started process to end.
func (cmd *Cmd) Wait(ctx context.Context) (ExitStatus, error) {
	if cmd.PID == 0 {
		return ExitStatus{}, errors.New("smpc: not started")
	}
	return cmd.c.wait(ctx, cmd.oslet, cmd.PID)
}

// Run starts the process and waits for it.
func (cmd *Cmd) Run(ctx context.Context) (ExitStatus, error) {
	if err := cmd.Start(ctx); err != nil {
		return ExitStatus{}, err
	}
	return cmd.Wait(ctx)
}
