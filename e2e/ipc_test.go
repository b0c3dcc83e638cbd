package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc"
	"github.com/smpc-cluster/smpc/internal/ipc"
)

type ipcObject struct {
	Kind   string `json:"kind"`
	ID     int32  `json:"id"`
	Key    int32  `json:"key"`
	OSlet  int    `json:"oslet"`
	QNum   int    `json:"qnum"`
	CBytes int    `json:"cbytes"`
}

func (c *cluster) ipcs() []ipcObject {
	c.t.Helper()
	var objs []ipcObject
	if err := json.Unmarshal([]byte(c.must("ipcs", "--json")), &objs); err != nil {
		c.t.Fatal(err)
	}
	return objs
}

// background starts smpc with args and returns a function that waits for
// it and gives its output and exit status.
func (c *cluster) background(args ...string) (*exec.Cmd, func() (string, int)) {
	c.t.Helper()
	cmd := exec.Command(smpcBin, append([]string{"--state-dir", c.dir}, args...)...)
	cmd.Dir = "/" // seen by every OSlet, as in smpc
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cmd.Process.Kill() })
	return cmd, func() (string, int) {
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			return out.String() + " (killed: hung)", -1
		}
		return out.String(), cmd.ProcessState.ExitCode()
	}
}

// blockedIn waits until the cluster's process whose command ends in cmd
// sleeps in the kernel function call (a /proc/PID/task/TID/wchan, read inside
// an OSlet, which sees every process), so that a test of what wakes it
// knows it was blocked there, not merely slow to start.
func blockedIn(t *testing.T, c *cluster, cmd, call string) {
	t.Helper()
	p := findProc(c, cmd)
	waitFor(t, fmt.Sprintf("%q to block in %s", cmd, call), func() bool {
		// Any of its threads: a Go program makes the call on one of its own.
		out, _ := c.smpc("run", "--on", "1", "--", "sh", "-c", fmt.Sprintf("cat /proc/%d/task/*/wchan", p.PID))
		return strings.Contains(out, call)
	})
}

// TestMessageQueues checks SysV message queues across OSlets: one key names
// one queue from everywhere, message types select as msgrcv(2) says, a full
// queue blocks its sender, and removal wakes a blocked receiver.
func TestMessageQueues(t *testing.T) {
	c := boot(t)
	// Types, with a producer on OSlet 1 and a consumer on OSlet 2; keys in
	// decimal and hex name the same queue.
	for _, m := range [][2]string{{"3", "three"}, {"1", "one"}, {"2", "two"}, {"1", "uno"}} {
		if out, code := c.inside(1, "msg", "send", "4660", m[0], m[1]); code != 0 {
			t.Fatalf("send %v from oslet 1: %d %s", m, code, out)
		}
	}
	objs := c.ipcs()
	if len(objs) != 1 || objs[0].Kind != "msg" || objs[0].Key != 0x1234 || objs[0].QNum != 4 {
		t.Fatalf("ipcs after four sends: %+v", objs)
	}
	for _, rcv := range []struct{ args, want string }{
		{"--type 2", "two"},
		{"--type -2", "one"}, // the lowest type up to 2, first of them
		{"--type 1 --except", "three"},
		{"", "uno"},
	} {
		args := append([]string{"msg", "recv", "0x1234"}, strings.Fields(rcv.args)...)
		if out, code := c.inside(2, args...); code != 0 || out != rcv.want+"\n" {
			t.Fatalf("recv %s on oslet 2: %d %q, want %q", rcv.args, code, out, rcv.want)
		}
	}
	if out, code := c.smpc("msg", "recv", "0x1234", "--nowait"); code != 1 || !strings.Contains(out, "no message of desired type") {
		t.Fatalf("recv --nowait on an empty queue: %d %s", code, out)
	}

	// A full queue (16384 bytes) blocks the sender until a receiver on
	// another OSlet makes room.
	big := strings.Repeat("x", 8192)
	c.must("msg", "send", "0x1234", "5", big)
	c.must("msg", "send", "0x1234", "5", big)
	if out, code := c.smpc("msg", "send", "0x1234", "5", "more", "--nowait"); code != 1 || !strings.Contains(out, "resource temporarily unavailable") {
		t.Fatalf("send --nowait to a full queue: %d %s", code, out)
	}
	_, senderDone := c.background("run", "--on", "2", "--", smpcBin, "msg", "send", "0x1234", "6", "after")
	blockedIn(t, c, "msg send 0x1234 6 after", "do_msgsnd")
	if out, code := c.inside(1, "msg", "recv", "0x1234", "--type", "5"); code != 0 || out != big+"\n" {
		t.Fatalf("recv of a big message: %d, %d bytes", code, len(out))
	}
	if out, code := senderDone(); code != 0 {
		t.Fatalf("blocked sender after room was made: %d %s", code, out)
	}
	if out := c.must("msg", "recv", "0x1234", "--type", "6"); out != "after\n" {
		t.Fatalf("the blocked sender's message: %q", out)
	}

	// Removal wakes a blocked receiver with "identifier removed".
	_, receiverDone := c.background("run", "--on", "1", "--", smpcBin, "msg", "recv", "0x1234", "--type", "99")
	blockedIn(t, c, "msg recv 0x1234 --type 99", "do_msgrcv")
	c.must("ipcrm", "-Q", "0x1234")
	if out, code := receiverDone(); code != 1 || !strings.Contains(out, "identifier removed") {
		t.Fatalf("receiver woken by removal: %d %s", code, out)
	}
	if out, code := c.smpc("msg", "recv", "0x1234", "--nowait"); code != 1 || !strings.Contains(out, "no such file or directory") {
		t.Fatalf("recv on a removed key: %d %s", code, out)
	}
	for _, bad := range [][]string{{"msg", "send", "zz", "1", "x"}, {"msg", "send", "1", "0", "x"}, {"ipcrm", "-q", "99"}, {"ipcrm"}, {"sem", "op", "1", "0-1"}} {
		if out, code := c.smpc(bad...); code == 0 || out == "" {
			t.Errorf("smpc %v: exit %d with %q, want an error", bad, code, out)
		}
	}
}

// TestIPCCounterHelper, run by TestSemaphoreMutex on the host and inside
// OSlets, adds one to a counter in a /gtmp file it maps MAP_SHARED, many
// times, under a semaphore set of the cluster: a read, a pause and a write,
// so that two holders at once would lose updates.
func TestIPCCounterHelper(t *testing.T) {
	if os.Getenv("SMPC_E2E_HELPER") != "counter" {
		t.Skip("helper process for TestSemaphoreMutex")
	}
	key, _ := ipc.ParseKey(os.Getenv("SMPC_KEY"))
	rounds, _ := strconv.Atoi(os.Getenv("SMPC_ROUNDS"))
	c, err := smpc.Connect("")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := c.SemGet(context.Background(), key, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(os.Getenv("SMPC_COUNTER"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, 8, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	counter := (*int64)(unsafe.Pointer(&mem[0]))
	for range rounds {
		if err := s.Op(smpc.SemOp{Delta: -1, Flags: smpc.SemUndo}); err != nil {
			t.Fatal(err)
		}
		v := *counter
		runtime.Gosched()
		*counter = v + 1
		if err := s.Op(smpc.SemOp{Delta: 1, Flags: smpc.SemUndo}); err != nil {
			t.Fatal(err)
		}
	}
	fmt.Println("counted", rounds)
}

// TestSemaphoreMutex checks a semaphore set as a mutex between processes on
// every OSlet and on the host, around a counter in shared memory.
func TestSemaphoreMutex(t *testing.T) {
	c := boot(t)
	helper := testBinary(t)
	c.must("sem", "create", "0x51", "1", "--values", "1")
	gtmp := filepath.Join(c.dir, "gtmp")
	if err := os.WriteFile(filepath.Join(gtmp, "counter"), make([]byte, 8), 0o666); err != nil {
		t.Fatal(err)
	}
	const rounds = 2000
	env := []string{"SMPC_E2E_HELPER=counter", "SMPC_KEY=0x51", "SMPC_ROUNDS=" + strconv.Itoa(rounds)}
	var wg sync.WaitGroup
	errs := make(chan string, 3)
	for _, where := range []string{"1", "2", "host"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var cmd *exec.Cmd
			if where == "host" {
				cmd = exec.Command(helper, "-test.run=^TestIPCCounterHelper$")
				cmd.Env = append(os.Environ(), append(env, "SMPC_STATE_DIR="+c.dir, "SMPC_COUNTER="+filepath.Join(gtmp, "counter"))...)
			} else {
				cmd = exec.Command(smpcBin, append(append([]string{"--state-dir", c.dir, "run", "--on", where, "--", "/usr/bin/env"}, env...),
					"SMPC_COUNTER=/gtmp/counter", "SMPC_BIN="+smpcBin, helper, "-test.run=^TestIPCCounterHelper$")...)
			}
			if out, code := run(cmd); code != 0 || !strings.Contains(out, "counted") {
				errs <- fmt.Sprintf("counter on %s: %d %s", where, code, out)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	b, _ := os.ReadFile(filepath.Join(gtmp, "counter"))
	if got := *(*int64)(unsafe.Pointer(&b[0])); got != 3*rounds {
		t.Fatalf("counter %d, want %d: the semaphore let two holders in", got, 3*rounds)
	}
	if out := c.must("sem", "get", "0x51"); !strings.Contains(out, "0       1      0       0") {
		t.Fatalf("semaphore after the run:\n%s", out)
	}
}

// TestSemaphoreOpsAndUndo checks atomic operations, wait-for-zero, SEM_UNDO
// of a process killed on another OSlet, and that a blocked process that is
// killed leaves no waiter behind.
func TestSemaphoreOpsAndUndo(t *testing.T) {
	c := boot(t)
	c.must("sem", "create", "77", "2", "--values", "1,1")
	if out, code := c.smpc("sem", "create", "77", "2"); code != 1 || !strings.Contains(out, "file exists") {
		t.Fatalf("create on a key in use: %d %s", code, out)
	}
	// All or nothing: the second operation would block, so neither applies.
	if out, code := c.inside(1, "sem", "op", "77", "0:-1", "1:-2", "--nowait"); code != 1 || !strings.Contains(out, "resource temporarily unavailable") {
		t.Fatalf("op that cannot apply: %d %s", code, out)
	}
	if out := c.must("sem", "get", "77", "--json"); !strings.Contains(out, `"num":0,"value":1`) || !strings.Contains(out, `"num":1,"value":1`) {
		t.Fatalf("values after a refused op: %s", out)
	}
	// Wait for zero: blocks until semaphore 1 is 0.
	_, zeroDone := c.background("run", "--on", "2", "--", smpcBin, "sem", "op", "77", "1:0")
	blockedIn(t, c, "sem op 77 1:0", "do_semtimedop")
	if out := c.must("sem", "get", "77", "--json"); !strings.Contains(out, `"num":1,"value":1,"ncnt":0,"zcnt":1`) {
		t.Fatalf("GETZCNT with a waiter: %s", out)
	}
	c.must("sem", "op", "77", "1:-1")
	if out, code := zeroDone(); code != 0 {
		t.Fatalf("wait for zero after the semaphore reached 0: %d %s", code, out)
	}

	// A holder on OSlet 2 with --undo is killed: its take is undone, and the
	// waiter on OSlet 1 gets the semaphore.
	c.background("run", "--on", "2", "--", smpcBin, "sem", "op", "77", "0:-1", "--undo", "--hold")
	waitFor(t, "the holder to take the semaphore", func() bool {
		return strings.Contains(c.must("sem", "get", "77", "--json"), `"num":0,"value":0`)
	})
	holder := findProc(c, "sem op 77 0:-1 --undo --hold")
	_, waiterDone := c.background("run", "--on", "1", "--", smpcBin, "sem", "op", "77", "0:-1")
	blockedIn(t, c, "sem op 77 0:-1", "do_semtimedop")
	c.must("kill", "-KILL", strconv.Itoa(int(holder.PID)))
	if out, code := waiterDone(); code != 0 {
		t.Fatalf("waiter after the holder was killed: %d %s", code, out)
	}

	// A blocked waiter that is killed leaves no waiter behind.
	c.background("run", "--on", "2", "--", smpcBin, "sem", "op", "77", "0:-1")
	waitFor(t, "a blocked waiter", func() bool {
		return strings.Contains(c.must("sem", "get", "77", "--json"), `"num":0,"value":0,"ncnt":1`)
	})
	blocked := findProc(c, "sem op 77 0:-1")
	c.must("kill", "-KILL", strconv.Itoa(int(blocked.PID)))
	waitFor(t, "the killed waiter to leave", func() bool {
		return strings.Contains(c.must("sem", "get", "77", "--json"), `"num":0,"value":0,"ncnt":0`)
	})
	c.must("sem", "op", "77", "0:1")
	if out := c.must("sem", "get", "77", "--json"); !strings.Contains(out, `"num":0,"value":1`) {
		t.Fatalf("a killed waiter took the semaphore: %s", out)
	}
	c.must("ipcrm", "-S", "77")
	if objs := c.ipcs(); len(objs) != 0 {
		t.Fatalf("ipcs after ipcrm: %+v", objs)
	}
}

// findProc returns the process whose command line ends with cmd (and is not
// the smpc run that started it).
func findProc(c *cluster, cmd string) proc {
	c.t.Helper()
	var found proc
	waitFor(c.t, cmd, func() bool {
		for _, p := range c.ps() {
			if strings.HasSuffix(p.Cmd, cmd) && !strings.Contains(p.Cmd, " run ") {
				found = p
				return true
			}
		}
		return false
	})
	return found
}

// TestIPCPermissions checks that the mode bits decide who gets an object,
// from any OSlet, and that only the owner or root removes it.
func TestIPCPermissions(t *testing.T) {
	c := boot(t)
	nobody := []string{"setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", smpcBin}
	asNobody := func(k int, args ...string) (string, int) {
		return c.smpc(append(append([]string{"run", "--on", strconv.Itoa(k), "--"}, nobody...), args...)...)
	}
	c.must("msg", "send", "0x600", "1", "secret", "--mode", "0600")
	c.must("msg", "send", "0x666", "1", "open", "--mode", "0666")
	for k := 1; k <= 2; k++ {
		if out, code := asNobody(k, "msg", "recv", "0x600", "--nowait"); code != 1 || !strings.Contains(out, "permission denied") {
			t.Errorf("nobody on oslet %d read a 0600 queue: %d %s", k, code, out)
		}
	}
	if out, code := asNobody(2, "msg", "recv", "0x666"); code != 0 || out != "open\n" {
		t.Errorf("nobody reading a 0666 queue: %d %s", code, out)
	}
	if out, code := asNobody(1, "ipcrm", "-Q", "0x666"); code != 1 || !strings.Contains(out, "operation not permitted") {
		t.Errorf("nobody removed root's queue: %d %s", code, out)
	}
	// nobody's own queue is nobody's to remove.
	if out, code := asNobody(2, "msg", "send", "0x700", "1", "mine"); code != 0 {
		t.Fatalf("nobody creating a queue: %d %s", code, out)
	}
	if out, code := asNobody(1, "ipcrm", "-Q", "0x700"); code != 0 {
		t.Errorf("nobody removing its own queue: %d %s", code, out)
	}
}

// TestIPCOutlivesOSletDeath checks that the cluster's objects are the
// kernel's and belong to no OSlet: when an OSlet dies, its processes blocked
// on an object die with it, and the object carries on for the others.
func TestIPCOutlivesOSletDeath(t *testing.T) {
	c := boot(t)
	c.must("sem", "create", "0x1000", "1")
	_, blockedDone := c.background("run", "--on", "2", "--", smpcBin, "sem", "op", "0x1000", "0:-1")
	waitFor(t, "the waiter on OSlet 2 to block", func() bool {
		return strings.Contains(c.must("sem", "get", "0x1000", "--json"), `"ncnt":1`)
	})
	if err := exec.Command("kill", "-9", strconv.Itoa(c.state().Inits["2"])).Run(); err != nil {
		t.Fatal(err)
	}
	if out, code := blockedDone(); code != 137 {
		t.Errorf("a waiter lost with its OSlet: %d %s", code, out)
	}
	waitFor(t, "the lost waiter to leave the set", func() bool {
		return strings.Contains(c.must("sem", "get", "0x1000", "--json"), `"ncnt":0`)
	})
	c.must("run", "--on", "1", "--", smpcBin, "sem", "op", "0x1000", "0:1")
	if out := c.must("sem", "get", "0x1000", "--json"); !strings.Contains(out, `"value":1`) {
		t.Errorf("the set after OSlet 2 died: %s", out)
	}
	if out := c.must("ipcs"); !strings.Contains(out, "0x00001000") {
		t.Errorf("ipcs after OSlet 2 died: %s", out)
	}
}
