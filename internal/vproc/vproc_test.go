package vproc

import (
	"context"
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestGlobalPID(t *testing.T) {
	tests := []struct{ oslet, local int }{{1, 1}, {2, 4242}, {MaxOSlet, 1<<LocalBits - 1}}
	for _, tt := range tests {
		p := Global(tt.oslet, tt.local)
		if p <= 0 || p.OSlet() != tt.oslet || p.Local() != tt.local {
			t.Errorf("Global(%d, %d) = %d: OSlet %d, Local %d", tt.oslet, tt.local, p, p.OSlet(), p.Local())
		}
		q, err := ParsePID(p.String())
		if err != nil || q != p {
			t.Errorf("ParsePID(%q) = %d, %v", p.String(), q, err)
		}
	}
	for _, bad := range []string{"", "x", "-5", "0", "1234", "8388608"} {
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
	tab := NewTable(2)
	pid := Global(2, 100)
	// The reaper sees the exit before Add: the status must not be lost.
	tab.Reaped(100, unix.WaitStatus(3<<8))
	tab.Add(Process{PID: pid})
	st, err := tab.Wait(context.Background(), pid, func() bool { return false })
	if err != nil || st.Code != 3 {
		t.Fatalf("wait after early exit: %v, %v", st, err)
	}

	pid2 := Global(2, 101)
	tab.Add(Process{PID: pid2})
	done := make(chan ExitStatus)
	go func() {
		st, _ := tab.Wait(context.Background(), pid2, func() bool { return true })
		done <- st
	}()
	time.Sleep(10 * time.Millisecond)
	tab.Reaped(101, unix.WaitStatus(unix.SIGTERM))
	if st := <-done; st.Signal != int(unix.SIGTERM) || st.ShellCode() != 143 {
		t.Fatalf("waiter got %+v", st)
	}
	if _, err := tab.Wait(context.Background(), Global(2, 999), func() bool { return false }); !errors.Is(err, ErrNoProcess) {
		t.Fatalf("wait for unknown pid: %v", err)
	}
}

func TestTableOrphan(t *testing.T) {
	tab := NewTable(3)
	pid := Global(3, 7)
	tab.Add(Process{PID: pid, Parent: Global(1, 50), ParentOSlet: 1})
	tab.OrphanFrom(1)
	if p, _ := tab.Lookup(7); p.Parent != Global(3, 1) {
		t.Fatalf("parent after orphaning = %d, want the init", p.Parent)
	}
}
