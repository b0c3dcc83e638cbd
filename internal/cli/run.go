package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc"
	"github.com/smpc-cluster/smpc/internal/vproc"
)

// Exit statuses of smpc run for its own failures, as env(1) and chroot(1)
// use them: 125 smpc failed, 126 not executable, 127 not found.
const (
	exitRunFailed   = 125
	exitNotExec     = 126
	exitNotFound    = 127
	exitOSletIsDown = 137
)

func runCmd() *cobra.Command {
	var on int
	var policy string
	var detach, allowSockets, directDevices bool
	cmd := &cobra.Command{
		Use:   "run [--on K | --policy P] [--detach] -- CMD [ARGS...]",
		Short: "Start a command on an OSlet, attached to this terminal or detached",
		Long: `Start CMD on OSlet K (--on), or where a launch policy puts it: local (the
caller's OSlet; OSlet 1 from the host), round-robin or least-loaded.

A spreading policy (round-robin, least-loaded) is the seed's inherited
launch attribute: CMD and every descendant keep it across fork and exec, and
each program they execute is placed, before it runs, on the OSlet the policy
picks (its CPUs and memory), keeping its parent's files, /tmp and network.
So 'smpc run --policy least-loaded -- make -j8' spreads an unmodified
Makefile's recipes over the OSlets. The default policy, local, costs
nothing. Without --on or --policy, a nested 'smpc run' inherits the policy
of its nearest ancestor started with one.

Attached (the default), the caller's standard input, output and error, and
every other descriptor it leaves open across exec (a make's jobserver pipe),
are handed to CMD itself at the same numbers, so pipes between OSlets are
real pipes; signals sent to
smpc run go to CMD's process group (Ctrl-C, Ctrl-Z, fg and bg work, and vi or
top on another OSlet use this terminal), and smpc run exits with
CMD's status (128+N when killed by signal N). Its own failures exit 125, a
program that is not executable 126, one that is not found 127, and a process
lost with its OSlet 137.

With --detach it prints CMD's PID and returns at once; only standard input,
output and error are handed over then (as /dev/null).

A process that would inherit a network socket is not created on another OSlet
(the seed's rule) unless --allow-sockets is given.

With --direct-devices, CMD and its descendants get the owner's own descriptor
when they open /rdev/K/NAME, so their device reads and writes run at native
speed instead of through the init's FUSE files; each of their opens then
costs a round trip to the OSlet's init (a seccomp trap), and a process that
is not root runs with no_new_privs.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := vproc.ParsePolicy(policy); err != nil {
				return runFailed(err)
			}
			if err := checkOSlet(cmd, "on", on); err != nil {
				return runFailed(err)
			}
			if on != 0 && policy != "" {
				return runFailed(errors.New("give --on or --policy, not both"))
			}
			c, err := connect()
			if err != nil {
				fmt.Fprintln(os.Stderr, "smpc:", err)
				return exitError{exitRunFailed}
			}
			defer c.Close()
			proc := c.Command(args[0], args[1:]...)
			proc.OSlet, proc.Policy, proc.Detach, proc.AllowSockets, proc.DirectDevices = on, policy, detach, allowSockets, directDevices
			if !detach {
				proc.Stdin, proc.Stdout, proc.Stderr = os.Stdin, os.Stdout, os.Stderr
				proc.ExtraFiles = inheritedFiles()
			}
			return runProcess(cmd, c, proc)
		},
	}
	// As env(1) and chroot(1) do, smpc run fails with 125 itself, so that
	// a script tells it from the program's own failures.
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return runFailed(err) })
	cmd.Flags().IntVar(&on, "on", 0, "start on OSlet `K`")
	cmd.Flags().StringVar(&policy, "policy", "", "launch policy: local, round-robin or least-loaded")
	cmd.Flags().BoolVar(&detach, "detach", false, "print the PID and return at once")
	cmd.Flags().BoolVar(&allowSockets, "allow-sockets", false, "allow a process that inherits a network socket on another OSlet")
	cmd.Flags().BoolVar(&directDevices, "direct-devices", false, "answer opens of /rdev with the owner's descriptor (native device speed; every open costs a trap)")
	return cmd
}

// inheritedFiles are the descriptors above 2 that this process would pass
// on across exec: those its caller left open for it (smpc's own are all
// close-on-exec). Entry i is descriptor 3+i; gaps are nil.
// runFailed reports err as smpc run's own failure: exit status 125.
func runFailed(err error) error {
	fmt.Fprintln(os.Stderr, "smpc:", err)
	return exitError{exitRunFailed}
}

func inheritedFiles() []*os.File {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil
	}
	var files []*os.File
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd < 3 {
			continue
		}
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC != 0 {
			continue
		}
		for len(files) <= fd-3 {
			files = append(files, nil)
		}
		files[fd-3] = os.NewFile(uintptr(fd), "inherited")
	}
	return files
}

func runProcess(cmd *cobra.Command, c *smpc.Client, proc *smpc.Cmd) error {
	ctx := context.Background()
	// Catch signals before the process exists, so none is lost in between.
	sigs := make(chan os.Signal, 16)
	if !proc.Detach {
		signal.Notify(sigs, unix.SIGINT, unix.SIGTERM, unix.SIGHUP, unix.SIGQUIT, unix.SIGTSTP,
			unix.SIGCONT, unix.SIGWINCH, unix.SIGUSR1, unix.SIGUSR2)
	}
	if err := proc.Start(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "smpc:", err)
		switch {
		case errors.Is(err, smpc.ErrNotFound):
			return exitError{exitNotFound}
		case errors.Is(err, smpc.ErrNoExec):
			return exitError{exitNotExec}
		}
		return exitError{exitRunFailed}
	}
	if proc.Detach {
		fmt.Fprintln(cmd.OutOrStdout(), proc.PID)
		return nil
	}
	ended, relayed := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(relayed)
		forwardSignals(c, proc.PID, sigs, ended)
	}()
	st, err := proc.Wait(ctx)
	// The process is gone: the relay passes on what it holds and ends.
	// The signals stay caught until smpc run exits, a moment later, and
	// those that come meanwhile go nowhere, as for any process that ended:
	// signal.Stop would cost a round trip to os/signal's own thread per
	// signal, as Notify did.
	close(ended)
	<-relayed
	if errors.Is(err, smpc.ErrDown) {
		fmt.Fprintln(os.Stderr, "smpc:", err)
		return exitError{exitOSletIsDown}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "smpc:", err)
		return exitError{exitRunFailed}
	}
	if st.OOM || st.Lost {
		// A shell says "Killed" for a SIGKILL; this says whose.
		fmt.Fprintf(os.Stderr, "smpc: process %d %s\n", proc.PID, st)
	}
	if code := st.ShellCode(); code != 0 {
		return exitError{code}
	}
	return nil
}

// forwardSignals passes the signals smpc run receives to its process's
// group, as a terminal sends Ctrl-C to the whole foreground job: the process
// was made the leader of its own group, so a make and its recipes, or a
// shell and its children, all get it. On Ctrl-Z it stops the group, then
// stops itself, so that the shell sees the job stop; the SIGCONT of fg or bg
// then continues both. Once ended is closed it passes on those it holds
// and returns.
func forwardSignals(c *smpc.Client, pid smpc.PID, sigs chan os.Signal, ended <-chan struct{}) {
	for {
		select {
		case s := <-sigs:
			forwardSignal(c, pid, s.(unix.Signal))
		case <-ended:
			for {
				select {
				case s := <-sigs:
					forwardSignal(c, pid, s.(unix.Signal))
				default:
					return
				}
			}
		}
	}
}

// forwardSignal passes one signal on to pid's group (or pid alone).
func forwardSignal(c *smpc.Client, pid smpc.PID, sig unix.Signal) {
	ctx := context.Background()
	err := c.SignalGroup(ctx, pid, sig)
	if err != nil {
		err = c.Signal(ctx, pid, sig) // it left its group
	}
	if err != nil && !errors.Is(err, smpc.ErrNoProcess) {
		// Gone is fine (it ended as the signal came); anything else
		// the user should know: their Ctrl-C did not arrive.
		fmt.Fprintf(os.Stderr, "smpc: pass %s on to process %d: %v\n", vproc.SignalName(sig), pid, err)
	}
	if sig == unix.SIGTSTP {
		unix.Kill(0, unix.SIGSTOP)
	}
}
