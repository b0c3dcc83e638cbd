package vproc

import (
	"context"
	"errors"
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
	tab.Reaped(pid, unix.WaitStatus(3<<8))
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
	tab.Reaped(pid2, unix.WaitStatus(unix.SIGTERM))
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
		{"12:pids:/smpc/x/oslet-17\n11:cpuset:/smpc/x/oslet-17\n0::/\n", 17},
		{"4:memory:/process_api/e6/smpc/x-1/oslet-3\n", 3},
		{"0::/user.slice/user-0.slice/session-1.scope\n", 0},
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
