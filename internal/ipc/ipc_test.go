package ipc

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseKeyAndSemOp(t *testing.T) {
	for in, want := range map[string]int32{"0x1234": 0x1234, "4660": 0x1234, "0xffffffff": -1, "-1": -1} {
		if got, err := ParseKey(in); err != nil || got != want {
			t.Errorf("ParseKey(%q) = %#x, %v; want %#x", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "zz", "0x100000000"} {
		if _, err := ParseKey(bad); err == nil {
			t.Errorf("ParseKey(%q) succeeded", bad)
		}
	}
	if n, d, err := ParseSemOp("3:-2"); err != nil || n != 3 || d != -2 {
		t.Errorf("ParseSemOp(3:-2) = %d, %d, %v", n, d, err)
	}
	for _, bad := range []string{"3", "x:1", "1:y", "-1:1"} {
		if _, _, err := ParseSemOp(bad); err == nil {
			t.Errorf("ParseSemOp(%q) succeeded", bad)
		}
	}
}

// newNamespace starts a process in an IPC namespace of its own, as a
// cluster's PID 1 holds the cluster's, and returns its PID.
func newNamespace(t *testing.T) int {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("making an IPC namespace needs root")
	}
	holder := exec.Command("sleep", "60")
	holder.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWIPC}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	return holder.Process.Pid
}

func openNamespace(t *testing.T, pid int) *Namespace {
	t.Helper()
	ns, err := OpenNamespace(pid)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

func TestNamespaceIsApart(t *testing.T) {
	ns := openNamespace(t, newNamespace(t))
	key := int32(0x5e5e0000 | os.Getpid()&0xffff)
	var id int32
	if err := ns.Do(func() (err error) { id, err = MsgGet(key, Create|Excl|0o600); return err }); err != nil {
		t.Fatal(err)
	}
	if _, err := MsgGet(key, 0); !errors.Is(err, unix.ENOENT) {
		t.Errorf("the namespace's queue is visible outside it: %v", err)
	}
	if err := ns.Do(func() error { return MsgSend(id, 7, []byte("hello"), 0) }); err != nil {
		t.Fatal(err)
	}
	var objs []Info
	if err := ns.Do(func() (err error) { objs, err = List(nil); return err }); err != nil {
		t.Fatal(err)
	}
	if len(objs) != 1 || objs[0].Kind != KindMsg || objs[0].Key != key || objs[0].QNum != 1 || objs[0].CBytes != 5 || objs[0].Mode != 0o600 {
		t.Errorf("List in the namespace: %+v", objs)
	}
	var text []byte
	var mtype int64
	if err := ns.Do(func() (err error) { mtype, text, err = MsgReceive(id, 0, 64, NoWait); return err }); err != nil || mtype != 7 || string(text) != "hello" {
		t.Errorf("receive: %d %q %v", mtype, text, err)
	}
	if err := ns.Do(func() error { return Remove(KindMsg, id) }); err != nil {
		t.Fatal(err)
	}
}

// TestNamespaceKeepsUndo checks that SEM_UNDO adjustments made from the host
// through a Namespace last until it is closed, not until the call's end:
// entering an IPC namespace gives a thread an undo list of its own, which
// the kernel applies when that thread exits.
func TestNamespaceKeepsUndo(t *testing.T) {
	holder := newNamespace(t)
	ns := openNamespace(t, holder)
	var id int32
	if err := ns.Do(func() (err error) {
		if id, err = SemGet(Private, 1, Create|0o600); err != nil {
			return err
		}
		return SemSetVal(id, 0, 1)
	}); err != nil {
		t.Fatal(err)
	}
	value := func() int {
		var v int
		if err := ns.Do(func() (err error) { v, err = SemGetVal(id, 0); return err }); err != nil {
			t.Fatal(err)
		}
		return v
	}
	if err := ns.Do(func() error { return SemOps(id, []SemOp{{Delta: -1, Flags: Undo}}, 0) }); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond) // room for a thread to exit, were it to
	if v := value(); v != 0 {
		t.Fatalf("a held SEM_UNDO take was undone between calls: value %d", v)
	}
	other := openNamespace(t, holder) // to read the set once ns has closed
	ns.Close()
	var v int
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := other.Do(func() (err error) { v, err = SemGetVal(id, 0); return err })
		if err != nil {
			t.Fatal(err)
		}
		if v == 1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if v != 1 {
		t.Errorf("after Close the take was not undone: value %d", v)
	}
	other.Do(func() error { return Remove(KindSem, id) })
}
