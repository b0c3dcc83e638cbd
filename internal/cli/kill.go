package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc"
	"github.com/smpc-cluster/smpc/internal/vproc"
)

func killCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "kill [-SIGNAL | -s SIGNAL] [--] PID... | -l",
		Short: "Send a signal to processes (or, as -PGID, process groups) on any OSlet",
		Long: `Send SIGNAL (default TERM) to each PID, on whatever OSlet it runs. PIDs are
the cluster's, the same that ps and kill show inside every OSlet. A
negative PID names a process group, as in the shell's kill: 'smpc kill -TERM
-PGID', or 'smpc kill -- -PGID' with the default signal.
Signals are taken as kill(1) takes them: 9, KILL, SIGKILL, RTMIN+1. 'smpc kill -l'
lists them. A signal reaches a process only where Linux would allow it: the
caller is root or has the process's uid.`,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			sig, targets, list, err := parseKillArgs(args)
			if err != nil {
				return err
			}
			if list {
				fmt.Fprintln(cmd.OutOrStdout(), strings.Join(vproc.SignalNames(), "\n"))
				return nil
			}
			return withClient(func(c *smpc.Client) error {
				failed := false
				for _, t := range targets {
					group := strings.HasPrefix(t, "-")
					pid, err := vproc.ParsePID(strings.TrimPrefix(t, "-"))
					if err == nil {
						if group {
							err = c.SignalGroup(context.Background(), pid, sig)
						} else {
							err = c.Signal(context.Background(), pid, sig)
						}
					}
					if err != nil {
						fmt.Fprintln(os.Stderr, "smpc: kill:", err)
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

// parseKillArgs reads kill(1)'s argument forms by hand: "-9" and "-KILL"
// look like flags to any flag library.
func parseKillArgs(args []string) (sig unix.Signal, targets []string, list bool, err error) {
	sig = unix.SIGTERM
	sigGiven := false
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-h" || a == "--help":
			return 0, nil, false, errors.New("usage: smpc kill [-SIGNAL | -s SIGNAL] [--] PID... (or -l)")
		case a == "-l" || a == "--list":
			return 0, nil, true, nil
		case a == "--":
			targets = append(targets, args[i+1:]...)
			i = len(args)
		case a == "-s" || a == "--signal":
			if i+1 >= len(args) {
				return 0, nil, false, errors.New("kill: -s needs a signal")
			}
			i++
			if sig, err = vproc.ParseSignal(args[i]); err != nil {
				return 0, nil, false, err
			}
			sigGiven = true
		case strings.HasPrefix(a, "--state-dir"):
			if v, ok := strings.CutPrefix(a, "--state-dir="); ok {
				stateDir = v
			} else if i+1 < len(args) {
				i++
				stateDir = args[i]
			}
		case strings.HasPrefix(a, "-") && len(targets) == 0 && len(a) > 1 && !sigGiven:
			// Only the first: after a signal, -N is a process group, as
			// the shell's kill reads 'kill -KILL -123'.
			if sig, err = vproc.ParseSignal(a[1:]); err != nil {
				return 0, nil, false, err
			}
			sigGiven = true
		default:
			targets = append(targets, a)
		}
	}
	if len(targets) == 0 {
		return 0, nil, false, errors.New("kill: no process named (usage: smpc kill [-SIGNAL] PID...)")
	}
	return sig, targets, false, nil
}

func waitCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "wait PID...",
		Short: "Wait for processes on any OSlet to end, and exit like the shell's wait",
		Long: `Block until each process ends and print its exit status. The exit status is
the last process's, as the shell's wait gives it (128+N when killed by signal
N). A process that ended shortly before is still found. A process whose OSlet
is down was lost with it: its status is 137. A process that smpc did not
start reports its status to its own parent, as on Linux: smpc wait then
says only that it ended.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var pids []smpc.PID
			for _, a := range args {
				pid, err := vproc.ParsePID(a)
				if err != nil {
					return err
				}
				pids = append(pids, pid)
			}
			return withClient(func(c *smpc.Client) error {
				code := 0
				for _, pid := range pids {
					st, err := c.Wait(context.Background(), pid)
					switch {
					case errors.Is(err, smpc.ErrDown):
						fmt.Fprintf(os.Stderr, "smpc: wait %d: %v\n", pid, err)
						code = st.ShellCode()
					case err != nil:
						fmt.Fprintf(os.Stderr, "smpc: wait %d: %v\n", pid, err)
						code = 127 // as the shell's wait for an unknown pid
					default:
						fmt.Fprintf(cmd.OutOrStdout(), "%d %s\n", pid, st)
						code = st.ShellCode()
					}
				}
				if code != 0 {
					return exitError{code}
				}
				return nil
			})
		},
	}
}
