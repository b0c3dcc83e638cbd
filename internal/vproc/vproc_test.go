package vproc

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParsePID(t *testing.T) {
	for _, good := range []string{"1", "4242", "4194303"} {
		if p, err := ParsePID(good); err != nil || p.String() != good {
			t.Errorf("ParsePID(%q) = %d, %v", good, p, err)
		}
	}
	for _, bad := range []string{"", "x", "-5", "0", "99999999999"} {
		if _, err := ParsePID(bad); err == nil {
			t.Errorf("ParsePID(%q) succeeded", bad)
		}
	}
}

func TestParseSignal(t *testing.T) {
	tests := map[string]unix.Signal{"9": unix.SIGKILL, "KILL": unix.SIGKILL, "sigterm": unix.SIGTERM,
		"SIGUSR1": unix.SIGUSR1, "0": 0, "RTMIN+1": 35, "RTMAX": 64, "cont": unix.SIGCONT}
	for in, want := range tests {
		if got, err := ParseSignal(in); err != nil || got != want {
			t.Errorf("ParseSignal(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"NOPE", "65", "-1", "RTMIN+99"} {
		if _, err := ParseSignal(bad); err == nil {
			t.Errorf("ParseSignal(%q) succeeded", bad)
		}
	}
}

func TestShellCode(t *testing.T) {
	if c := (ExitStatus{Code: 3}).ShellCode(); c != 3 {
		t.Errorf("exit 3: %d", c)
	}
	if c := (ExitStatus{Signal: 9}).ShellCode(); c != 137 {
		t.Errorf("SIGKILL: %d", c)
	}
	if c := LostStatus().ShellCode(); c != 137 {
		t.Errorf("lost: %d", c)
	}
}

func TestTableWaitAndEarlyExit(t *testing.T) {
	tab := NewTable(50)
	pid := PID(100)
	// The reaper sees the exit before Add: the status must not be lost.
	tab.Reaped(pid, StatusFromWait(unix.WaitStatus(3<<8)))
	tab.Add(Process{PID: pid})
	st, err := tab.Wait(context.Background(), pid, func() bool { return false })
	if err != nil || st.Code != 3 {
		t.Fatalf("wait after early exit: %v, %v", st, err)
	}

	pid2 := PID(101)
	tab.Add(Process{PID: pid2})
	done := make(chan ExitStatus)
	go func() {
		st, _ := tab.Wait(context.Background(), pid2, func() bool { return true })
		done <- st
	}()
	for deadline := time.Now().Add(5 * time.Second); tab.waiting(pid2) == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the waiter never blocked")
		}
	}
	tab.Reaped(pid2, StatusFromWait(unix.WaitStatus(unix.SIGTERM)))
	if st := <-done; st.Signal != int(unix.SIGTERM) || st.ShellCode() != 143 {
		t.Fatalf("waiter got %+v", st)
	}
	if _, err := tab.Wait(context.Background(), PID(999), func() bool { return false }); !errors.Is(err, ErrNoProcess) {
		t.Fatalf("wait for unknown pid: %v", err)
	}
}

func TestTableOrphan(t *testing.T) {
	tab := NewTable(30)
	pid := PID(7)
	tab.Add(Process{PID: pid, Parent: 50, ParentOSlet: 1})
	tab.OrphanFrom(1)
	if p, _ := tab.Lookup(pid); p.Parent != 30 {
		t.Fatalf("parent after orphaning = %d, want the init", p.Parent)
	}
}

func TestOSletOfCgroupFile(t *testing.T) {
	tests := []struct {
		text string
		want int
	}{
		{"0::/smpc/run-1234abcd/oslet-2\n", 2},
		{"0::/smpc/run-1234abcd/oslet-2/procs\n", 2},
		{"8:pids:/smpc/x/oslet-4/init\n", 4},
		{"0::/smpc/x/oslet-5/procs/docker/c1\n", 5},
		{"12:pids:/smpc/x/oslet-17\n11:cpuset:/smpc/x/oslet-17\n0::/\n", 17},
		{"4:memory:/process_api/e6/smpc/x-1/oslet-3\n", 3},
		{"0::/user.slice/user-0.slice/session-1.scope\n", 0},
		{"0::/system.slice/smpc-c1-1e48594d.scope/oslet-3/procs\n", 3},
		{"0::/system.slice/smpc.service/smpc-c1-1e48594d/oslet-6/init\n", 6},
		{"0::/system.slice/smpc.service/supervisor\n", 0},
		{"0::/system.slice/smpc-c1-1e48594d.scope/reaper\n", 0},
		{"0::/oslet-2/smpc/x\n", 0},
		{"0::/smpc/x/oslet-\n", 0},
		{"0::/elsewhere/oslet-2\n", 0},
		{"", 0},
	}
	for _, tt := range tests {
		if got := OSletOfCgroupFile(tt.text); got != tt.want {
			t.Errorf("OSletOfCgroupFile(%q) = %d, want %d", tt.text, got, tt.want)
		}
	}
}

func TestLostRecord(t *testing.T) {
	path := LostFile(t.TempDir())
	if _, ok := WasLost(path, 5); ok {
		t.Fatal("a missing record names pid 5")
	}
	if err := RecordLost(path, 2, []PID{5, 6}); err != nil {
		t.Fatal(err)
	}
	if err := RecordLost(path, 3, []PID{7}); err != nil {
		t.Fatal(err)
	}
	for pid, want := range map[PID]int{5: 2, 6: 2, 7: 3} {
		if k, ok := WasLost(path, pid); !ok || k != want {
			t.Errorf("WasLost(%d) = %d, %v; want %d", pid, k, ok, want)
		}
	}
	if _, ok := WasLost(path, 8); ok {
		t.Error("pid 8 was never lost")
	}
}

func TestReadStatusAndAllows(t *testing.T) {
	s, err := ReadStatus(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if s.Tgid != os.Getpid() || s.PPid != os.Getppid() || s.UID[0] != uint32(os.Getuid()) || len(s.NSpid) == 0 {
		t.Errorf("ReadStatus(self) = %+v", s)
	}
	if c := s.FileCred(); c.UID != uint32(os.Getuid()) || c.GID != uint32(os.Getgid()) {
		t.Errorf("FileCred = %+v", c)
	}
	if _, err := ReadStatus(-1); err == nil {
		t.Error("ReadStatus(-1) did not fail")
	}
	tests := []struct {
		c    Cred
		mode uint32
		want uint32
		ok   bool
	}{
		{Cred{UID: 0}, 0, 6, true},                                       // root
		{Cred{UID: 1000, GID: 1}, 0o600, 6, true},                        // owner
		{Cred{UID: 1001, GID: 100}, 0o640, 4, true},                      // group
		{Cred{UID: 1001, GID: 100}, 0o640, 2, false},                     // group, no write
		{Cred{UID: 1001, GID: 5, Groups: []uint32{100}}, 0o660, 6, true}, // supplementary group
		{Cred{UID: 1002, GID: 5}, 0o604, 4, true},                        // others
		{Cred{UID: 1002, GID: 5}, 0o660, 4, false},
		{Cred{UID: 1000, GID: 100}, 0o066, 4, false}, // the owner's bits decide for the owner
	}
	for _, tt := range tests {
		if got := tt.c.Allows(1000, 100, tt.mode, tt.want); got != tt.ok {
			t.Errorf("%+v.Allows(owner 1000:100, %o, %d) = %v, want %v", tt.c, tt.mode, tt.want, got, tt.ok)
		}
	}
}

func TestFileCredOf(t *testing.T) {
	c, err := FileCredOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if c.UID != uint32(os.Getuid()) || c.GID != uint32(os.Getgid()) {
		t.Errorf("FileCredOf(self) = %+v, want uid %d gid %d", c, os.Getuid(), os.Getgid())
	}
	if _, err := FileCredOf(-1); err == nil {
		t.Error("FileCredOf(-1) did not fail")
	}
}

// ReadKernelFile reads a file whole, past its first buffer, and fails as
// os.ReadFile does.
func TestReadKernelFile(t *testing.T) {
	want := make([]byte, 5000)
	for n := range want {
		want[n] = byte('a' + n%26)
	}
	path := t.TempDir() + "/big"
	if err := os.WriteFile(path, want, 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadKernelFile(path); err != nil || string(got) != string(want) {
		t.Errorf("ReadKernelFile of %d bytes: %d bytes, %v", len(want), len(got), err)
	}
	if got, err := ReadKernelFile("/proc/self/cmdline"); err != nil || len(got) == 0 {
		t.Errorf("ReadKernelFile(/proc/self/cmdline) = %q, %v", got, err)
	}
	if _, err := ReadKernelFile("/proc/self/no-such-file"); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "no-such-file") {
		t.Errorf("ReadKernelFile of a missing file: %v, want a not-exist error naming it", err)
	}
}
