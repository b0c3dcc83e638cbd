package smpcd

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc/internal/cli"
	"github.com/smpc-cluster/smpc/internal/cluster"
	"github.com/smpc-cluster/smpc/internal/statedir"
)

func bootCmd() *cobra.Command {
	var f cli.PlanFlags
	var detach bool
	var name string
	var readyFD int
	cmd := &cobra.Command{
		Use:   "boot",
		Short: cli.BootShort,
		Long: `Boot a cluster: make each OSlet's cgroup (cpuset, memory and pids limits),
start the cluster's PID 1 in a PID and IPC namespace that every OSlet shares,
start each OSlet's init in it with mount, UTS and network namespaces of its
own, and connect the OSlets to each other. The plan comes from --plan, or is
made as 'smpc plan' makes it.

The boot firmware is its own binary, smpcd, which smpc executes for boot and
shutdown; smpc itself, the small binary, is what every OSlet finds on its
PATH.

smpc boot runs in the foreground and stops the cluster on Ctrl-C; with
--detach it returns once the cluster is up. 'smpc shutdown' stops it either
way, removing every cgroup, mount, socket and state file it made.

The cluster's cgroups never go below the cgroup smpc boot runs in: on
cgroup v2 they go in that cgroup when it was delegated to it (a systemd
service with Delegate=yes: docs/smpc.service), else in a transient systemd
scope smpc-ID.scope where systemd runs the host, else under a top-level
"smpc" cgroup (docs/cgroups.md). In the foreground it tells systemd when the
cluster is up (Type=notify).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, err := statedir.Resolve(cli.StateDir())
			if err != nil {
				return err
			}
			p, err := f.Make()
			if err != nil {
				return err
			}
			if detach {
				return bootDetached(cmd, dir)
			}
			start := time.Now()
			c, err := cluster.Boot(cluster.Options{StateDir: dir, Plan: p, Name: name, Client: os.Getenv(cli.EnvClientBinary),
				Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
			if err != nil {
				if readyFD > 0 {
					ready := os.NewFile(uintptr(readyFD), "ready")
					fmt.Fprintln(ready, "error:", err)
					ready.Close()
				}
				return err
			}
			stop := make(chan os.Signal, 1)
			signal.Notify(stop, unix.SIGINT, unix.SIGTERM, unix.SIGHUP)
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "cluster %q up on %s in %v: %d OSlets\n", c.State().Name, dir, time.Since(start).Round(time.Millisecond), len(p.OSlets))
			cli.PrintPlan(out, p)
			if readyFD > 0 {
				ready := os.NewFile(uintptr(readyFD), "ready")
				fmt.Fprintln(ready, "ok")
				ready.Close()
			} else {
				fmt.Fprintln(out, "Ctrl-C or 'smpc shutdown' stops it.")
			}
			// A systemd service of Type=notify (docs/smpc.service) is
			// started once the cluster is up; elsewhere this does nothing.
			daemon.SdNotify(false, daemon.SdNotifyReady)
			for {
				select {
				case k := <-c.Exited():
					fmt.Fprintf(os.Stderr, "smpc: oslet %d is down; the others carry on\n", k)
					continue
				case <-stop:
				}
				break
			}
			daemon.SdNotify(false, daemon.SdNotifyStopping)
			killed, err := c.State().StopProcesses(cluster.DefaultGrace)
			if err != nil {
				fmt.Fprintln(os.Stderr, "smpc:", err)
			}
			reportKilled(os.Stderr, cluster.DefaultGrace, killed)
			return c.Shutdown()
		},
	}
	f.Add(cmd, true)
	cmd.Flags().BoolVar(&detach, "detach", false, "run the cluster in the background and return once it is up")
	cmd.Flags().StringVar(&name, "name", "", "the cluster's hostname (default: this host's)")

	cmd.Flags().IntVar(&readyFD, "ready-fd", 0, "")
	cmd.Flags().MarkHidden("ready-fd")
	return cmd
}

// bootDetached starts the same boot in a new session, with its output in the
// state dir's boot.log, and waits for its word that the cluster is up.
func bootDetached(cmd *cobra.Command, dir string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	var args []string
	for _, a := range os.Args[1:] {
		if a != "--detach" && a != "--detach=true" {
			args = append(args, a)
		}
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(dir, "boot.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	child := exec.Command(exe, append(args, "--ready-fd=3", "--state-dir="+dir)...)
	child.Stdout, child.Stderr = logf, logf
	child.ExtraFiles = []*os.File{w}
	child.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := child.Start(); err != nil {
		return fmt.Errorf("start boot in background: %w", err)
	}
	w.Close()
	line, _ := bufio.NewReader(r).ReadString('\n')
	line = strings.TrimSpace(line)
	if line != "ok" {
		child.Wait()
		if line == "" {
			return errors.New("boot in background failed (see " + filepath.Join(dir, "boot.log") + ")")
		}
		return errors.New(strings.TrimPrefix(line, "error: "))
	}
	child.Process.Release()
	st, err := cluster.ReadState(dir)
	if err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "cluster %q up on %s (boot pid %d): %d OSlets\n", st.Name, dir, st.Supervisor, len(st.Plan.OSlets))
	cli.PrintPlan(cmd.OutOrStdout(), st.Plan)
	return nil
}

func shutdownCmd() *cobra.Command {
	var timeout, grace time.Duration
	cmd := &cobra.Command{
		Use:   "shutdown",
		Short: cli.ShutdownShort,
		Long: `Stop the cluster as a host stops: every process of every OSlet gets SIGTERM,
and --grace (default 10s) to end; those still running then get SIGKILL, and
shutdown names them. Then the OSlets stop, and everything the boot made
(cgroups, mounts, network, sockets, state files) is removed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, err := statedir.Resolve(cli.StateDir())
			if err != nil {
				return err
			}
			if st, err := cluster.ReadState(dir); err == nil {
				killed, err := st.StopProcesses(grace)
				if err != nil {
					return err
				}
				reportKilled(cmd.ErrOrStderr(), grace, killed)
			}
			return cluster.RequestShutdown(dir, timeout)
		},
	}
	cmd.Flags().DurationVar(&grace, "grace", cluster.DefaultGrace, "how long processes have between SIGTERM and SIGKILL")
	cmd.Flags().DurationVar(&timeout, "timeout", 15*time.Second, "how long to wait, after the processes, for the OSlets to stop")
	return cmd
}

// reportKilled names the processes that a shutdown had to kill.
func reportKilled(w io.Writer, grace time.Duration, killed []cluster.Killed) {
	if len(killed) == 0 {
		return
	}
	fmt.Fprintf(w, "smpc: shutdown: %d processes were still running %v after SIGTERM; killed:\n", len(killed), grace)
	for _, k := range killed {
		fmt.Fprintf(w, "  pid %d on oslet %d: %s\n", k.PID, k.OSlet, k.Command)
	}
}
