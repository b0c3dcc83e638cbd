package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
)

// terminal is an interactive bash on a pseudo-terminal, driven as a user at
// a keyboard would drive it.
type terminal struct {
	t    *testing.T
	pty  *os.File
	mu   sync.Mutex
	out  strings.Builder
	seen int // output before this offset has been matched already
}

func startTerminal(t *testing.T, c *cluster) *terminal {
	t.Helper()
	sh := exec.Command("bash", "--norc", "--noprofile", "-i")
	sh.Env = append(os.Environ(), "PS1=PROMPT$ ", "TERM=xterm", "HISTFILE=/dev/null",
		"SMPC_STATE_DIR="+c.dir, "PATH="+filepath.Dir(smpcBin)+":"+os.Getenv("PATH"))
	f, err := pty.StartWithSize(sh, &pty.Winsize{Rows: 24, Cols: 80})
	if err != nil {
		t.Fatalf("start bash on a pty: %v", err)
	}
	term := &terminal{t: t, pty: f}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := f.Read(buf)
			term.mu.Lock()
			term.out.Write(buf[:n])
			term.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		sh.Process.Kill()
		sh.Wait()
		f.Close()
		if t.Failed() {
			t.Logf("terminal:\n%s", term.output())
		}
	})
	term.expect(`PROMPT\$ `)
	return term
}

func (term *terminal) output() string {
	term.mu.Lock()
	defer term.mu.Unlock()
	return term.out.String()
}

// send types keys.
func (term *terminal) send(keys string) {
	term.t.Helper()
	if _, err := term.pty.Write([]byte(keys)); err != nil {
		term.t.Fatalf("type %q: %v", keys, err)
	}
}

// expect waits for output matching re after what earlier expects matched.
func (term *terminal) expect(re string) string {
	term.t.Helper()
	pattern := regexp.MustCompile(re)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		out := term.output()
		if loc := pattern.FindStringIndex(out[term.seen:]); loc != nil {
			match := out[term.seen+loc[0] : term.seen+loc[1]]
			term.seen += loc[1]
			return match
		}
		time.Sleep(20 * time.Millisecond)
	}
	term.t.Fatalf("terminal never showed %q", re)
	return ""
}

// lastStatus asks the shell for the last command's exit status.
func (term *terminal) lastStatus() string {
	term.t.Helper()
	term.send("echo rc=$?\r")
	rc := term.expect(`rc=\d+`)
	term.expect(`PROMPT\$ `)
	return rc
}

// remote finds the process on OSlet k whose command line contains cmd.
func remote(c *cluster, k int, cmd string) (proc, bool) {
	for _, p := range c.ps() {
		if p.OSlet == k && strings.Contains(p.Cmd, cmd) && !strings.Contains(p.Cmd, "smpc") {
			return p, true
		}
	}
	return proc{}, false
}

// TestJobControl drives an interactive shell through a pseudo-terminal:
// Ctrl-C and Ctrl-Z on an attached 'smpc run' act on the process on the
// other OSlet, and fg and bg continue it, as for a local job.
func TestJobControl(t *testing.T) {
	c := boot(t)
	term := startTerminal(t, c)

	// Ctrl-C ends the remote process, and smpc run exits 130.
	term.send("smpc run --on 2 -- sleep 1001\r")
	waitFor(t, "sleep 1001 on oslet 2", func() bool { _, ok := remote(c, 2, "sleep 1001"); return ok })
	term.send("\x03")
	term.expect(`PROMPT\$ `)
	if rc := term.lastStatus(); rc != "rc=130" {
		t.Fatalf("smpc run: %s, want rc=130", rc)
	}
	waitFor(t, "sleep 1001 to end", func() bool { _, ok := remote(c, 2, "sleep 1001"); return !ok })

	// Ctrl-Z stops the remote job, bg continues it in the background, fg
	// brings it back, and Ctrl-C ends it.
	term.send(`smpc run --on 2 -- sh -c 'i=0; while :; do i=$((i+1)); echo tick-$i; sleep 0.1; done'` + "\r")
	term.expect(`tick-2\b`)
	term.send("\x1a")
	term.expect(`Stopped`)
	term.expect(`PROMPT\$ `)
	loop, ok := remote(c, 2, "tick-")
	if !ok {
		t.Fatal("the loop is not on oslet 2")
	}
	waitFor(t, "the loop to be stopped", func() bool { p, _ := remote(c, 2, "tick-"); return p.State == "T" })
	// Stopped (state T, above): it must print nothing over four of its
	// 100 ms ticks. An absence needs a window.
	before := term.output()
	time.Sleep(400 * time.Millisecond)
	if after := term.output(); strings.Count(after, "tick-") != strings.Count(before, "tick-") {
		t.Fatalf("the stopped loop still prints")
	}
	term.send("bg\r")
	term.expect(`tick-\d+`)
	if p, _ := remote(c, 2, "tick-"); p.State == "T" || p.PID != loop.PID {
		t.Fatalf("after bg the loop is %+v", p)
	}
	term.send("fg\r")
	term.expect(`tick-\d+`)
	term.send("\x03")
	term.expect(`PROMPT\$ `)
	if rc := term.lastStatus(); rc != "rc=130" {
		t.Fatalf("smpc run: %s, want rc=130", rc)
	}
	waitFor(t, "the loop to end", func() bool { _, ok := remote(c, 2, "tick-"); return !ok })
}

// TestFullScreenPrograms runs vi and top on another OSlet on the caller's
// terminal: they read its size, switch it to raw mode, draw, and take keys.
func TestFullScreenPrograms(t *testing.T) {
	for _, prog := range []string{"vi", "top"} {
		if _, err := exec.LookPath(prog); err != nil {
			t.Skipf("%s is not installed (CI installs vim-tiny and procps)", prog)
		}
	}
	c := boot(t)
	term := startTerminal(t, c)
	file := filepath.Join(filepath.Dir(smpcBin), "vi-test.txt")

	// vi on OSlet 2 edits a file: insert, write, quit.
	term.send("smpc run --on 2 -- vi " + file + "\r")
	term.expect(`vi-test.txt`)
	term.send("ihello from oslet 2\x1b")
	term.send(":wq\r")
	term.expect(`PROMPT\$ `)
	if rc := term.lastStatus(); rc != "rc=0" {
		t.Fatalf("smpc run: %s, want rc=0", rc)
	}
	if b, err := os.ReadFile(file); err != nil || strings.TrimSpace(string(b)) != "hello from oslet 2" {
		t.Fatalf("vi wrote %q, %v", b, err)
	}

	// top on OSlet 2 draws its screen on our terminal and quits on q.
	term.send("smpc run --on 2 -- top -d 0.5\r")
	term.expect(`Tasks:`)
	term.send("q")
	term.expect(`PROMPT\$ `)
	if rc := term.lastStatus(); rc != "rc=0" {
		t.Fatalf("smpc run: %s, want rc=0", rc)
	}
}
