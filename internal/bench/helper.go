package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc"
	"github.com/smpc-cluster/smpc/internal/plan"
)

// Helper is 'smpc bench-helper [--cpus LIST] NAME ARGS...': the processes
// that benchmarks start, on the host and inside OSlets. Each prints one line,
// "count nanoseconds", and returns its exit status. --cpus pins the helper to
// those CPUs, as an OSlet's cpuset pins what runs in it, so that a native
// side runs where its smpc side does.
func Helper(args []string) int {
	if len(args) >= 2 && args[0] == "--cpus" {
		err := pinAndRestart(args[1], args[2:])
		fmt.Fprintf(os.Stderr, "smpc bench-helper: %v\n", err)
		return 1
	}
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "smpc bench-helper: name a helper")
		return 2
	}
	helpers := map[string]func(*flag.FlagSet, []string) error{
		"echo":         echo,
		"pipe-write":   pipeWrite,
		"pipe-read":    pipeRead,
		"loop":         loop,
		"signal-wait":  signalWait,
		"spawn-loop":   spawnLoop,
		"fork-loop":    forkLoop,
		"exec-loop":    execLoop,
		"run-cmd":      runCmd,
		"msg-pingpong": msgPingPong,
		"sem-loop":     semLoop,
		"tcp-sink":     tcpSink,
		"read-file":    readFile,
		"tcp-send":     tcpSend,
		"tcp-connect":  tcpConnect,
		"tcp-reply":    tcpReply,
		"tcp-requests": tcpRequests,
		"detect-down":  detectDown,
	}
	h, ok := helpers[args[0]]
	if !ok {
		fmt.Fprintf(os.Stderr, "smpc bench-helper: unknown helper %q\n", args[0])
		return 2
	}
	fs := flag.NewFlagSet("bench-helper "+args[0], flag.ContinueOnError)
	if err := h(fs, args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "smpc bench-helper %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

// pinAndRestart pins the process to cpus and starts the helper again, so
// that the Go runtime sizes itself to them as it does inside a cpuset. It
// returns only on failure.
func pinAndRestart(cpus string, args []string) error {
	if err := Pin(cpus); err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	return unix.Exec(exe, append([]string{exe, "bench-helper"}, args...), os.Environ())
}

// Pin sets the calling thread's CPU affinity (the whole process's, before
// other threads start) to a kernel CPU list such as "0-3".
func Pin(cpus string) error {
	set, err := plan.ParseSet(cpus)
	if err != nil {
		return err
	}
	var mask unix.CPUSet
	for _, c := range set {
		mask.Set(c)
	}
	if err := unix.SchedSetaffinity(0, &mask); err != nil {
		return fmt.Errorf("pin to CPUs %s: %w", cpus, err)
	}
	return nil
}

func report(count int64, took time.Duration) {
	fmt.Printf("%d %d\n", count, took.Nanoseconds())
}

// echo sends back every message that arrives on descriptor 3.
func echo(_ *flag.FlagSet, _ []string) error {
	buf := make([]byte, 64)
	for {
		n, err := unix.Read(3, buf)
		if err != nil || n == 0 {
			return nil
		}
		if _, err := unix.Write(3, buf[:n]); err != nil {
			return nil
		}
	}
}

// pipeChunk is the size of each write and read: large, as a program moving
// much data would use.
const pipeChunk = 128 << 10

// pipeWrite writes the number of bytes its argument says to standard output.
func pipeWrite(fs *flag.FlagSet, args []string) error {
	var total int64
	if len(args) != 1 {
		return errors.New("usage: pipe-write BYTES")
	}
	if _, err := fmt.Sscan(args[0], &total); err != nil {
		return fmt.Errorf("bad byte count %q", args[0])
	}
	buf := make([]byte, pipeChunk)
	for total > 0 {
		n, err := unix.Write(1, buf[:min(int64(len(buf)), total)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("write: %w", err)
		}
		total -= int64(n)
	}
	return nil
}

// pipeRead reads standard input to its end and reports the bytes and the
// time from the first byte to the end.
func pipeRead(_ *flag.FlagSet, _ []string) error {
	buf := make([]byte, pipeChunk)
	var total int64
	var start time.Time
	for {
		n, err := unix.Read(0, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		if n == 0 {
			break
		}
		if total == 0 {
			start = time.Now()
		}
		total += int64(n)
	}
	report(total, time.Since(start))
	return nil
}

// loop runs a CPU-bound or system-call-heavy loop for a while and reports
// its iterations.
func loop(fs *flag.FlagSet, args []string) error {
	d := fs.Duration("for", DefaultLoopTime, "how long to loop")
	if len(args) == 0 {
		return errors.New("usage: loop cpu|syscall|open [--for D]")
	}
	kind := args[0]
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	var chunk func() int64
	switch kind {
	case "cpu":
		x := uint64(88172645463325252)
		chunk = func() int64 {
			// xorshift: nothing for the compiler to fold away.
			for i := 0; i < 1<<20; i++ {
				x ^= x << 13
				x ^= x >> 7
				x ^= x << 17
			}
			if x == 0 {
				fmt.Fprintln(os.Stderr, "never")
			}
			return 1 << 20
		}
	case "syscall":
		zero, err := unix.Open("/dev/zero", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(zero)
		buf := make([]byte, 64)
		chunk = func() int64 {
			for i := 0; i < 1024; i++ {
				unix.Getpid()
				unix.Read(zero, buf)
			}
			return 1024
		}
	case "open":
		// What a process with direct device opens pays on every open.
		chunk = func() int64 {
			for i := 0; i < 256; i++ {
				if fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
					unix.Close(fd)
				}
			}
			return 256
		}
	default:
		return fmt.Errorf("unknown loop %q (cpu, syscall or open)", kind)
	}
	return timedLoop(*d, func() (int64, error) { return chunk(), nil })
}

// timedLoop runs step again and again for d, then reports the count of what
// the steps did and the time they took.
func timedLoop(d time.Duration, step func() (int64, error)) error {
	var count int64
	start := time.Now()
	for time.Since(start) < d {
		n, err := step()
		if err != nil {
			return err
		}
		count += n
	}
	report(count, time.Since(start))
	return nil
}

// signalWait starts a sleeping process on OSlet --to, then times killing it
// and waiting for its status, -n times.
func signalWait(fs *flag.FlagSet, args []string) error {
	to := fs.Int("to", 0, "the OSlet of the processes")
	n := fs.Int("n", DefaultCalls, "how many")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx := context.Background()
	c, err := smpc.Connect("")
	if err != nil {
		return err
	}
	defer c.Close()
	var took time.Duration
	for i := 0; i < *n; i++ {
		cmd := c.Command("/bin/sleep", "1000")
		cmd.OSlet = *to
		if err := cmd.Start(ctx); err != nil {
			return err
		}
		start := time.Now()
		if err := c.Signal(ctx, cmd.PID, syscall.SIGKILL); err != nil {
			return err
		}
		st, err := cmd.Wait(ctx)
		if err != nil {
			return err
		}
		took += time.Since(start)
		if st.Signal != int(syscall.SIGKILL) {
			return fmt.Errorf("process %d ended with %s, not by SIGKILL", cmd.PID, st)
		}
	}
	report(int64(*n), took)
	return nil
}

// spawnLoop creates /bin/true on OSlet --to and waits for it, again and
// again for a while, and reports how many it made.
func spawnLoop(fs *flag.FlagSet, args []string) error {
	to := fs.Int("to", 0, "the OSlet to create processes on")
	d := fs.Duration("for", time.Second, "how long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx := context.Background()
	c, err := smpc.Connect("")
	if err != nil {
		return err
	}
	defer c.Close()
	return timedLoop(*d, func() (int64, error) {
		cmd := c.Command("/bin/true")
		cmd.OSlet = *to
		return 1, succeed(cmd.Run(ctx))
	})
}

// forkLoop is spawnLoop's native counterpart: fork, exec and wait for
// /bin/true here, again and again for a while.
// execLoop starts /bin/true again and again for a while, and reports the
// time of the starts alone: fork and execve up to the new program's image
// in place (os/exec waits for the exec through a close-on-exec pipe), not
// its run, exit or wait, which a placed program spends elsewhere.
func execLoop(fs *flag.FlagSet, args []string) error {
	d := fs.Duration("for", time.Second, "how long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var count int64
	var starting time.Duration
	for begin := time.Now(); time.Since(begin) < *d; count++ {
		cmd := exec.Command("/bin/true")
		start := time.Now()
		if err := cmd.Start(); err != nil {
			return err
		}
		starting += time.Since(start)
		if err := cmd.Wait(); err != nil {
			return err
		}
	}
	report(count, starting)
	return nil
}

func forkLoop(fs *flag.FlagSet, args []string) error {
	d := fs.Duration("for", time.Second, "how long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	return timedLoop(*d, func() (int64, error) { return 1, exec.Command("/bin/true").Run() })
}
