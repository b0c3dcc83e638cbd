package vproc

import (
	"context"
	"errors"
	"sync"
	"time"
)

// ErrNoProcess is returned for a PID that is neither running nor recently ended.
var ErrNoProcess = errors.New("no such process")

// Process is what an OSlet's init records about a process it started.
type Process struct {
	PID    PID      // its PID in the cluster
	Parent PID      // remote parent while attached, else the init
	UID    uint32   // real user ID it runs as
	Policy Policy   // inherited launch policy for its descendants
	Argv   []string // command line as requested
	// ParentOSlet is the OSlet whose init holds the attached parent (0 for the
	// host or none); if that OSlet goes down, the process is orphaned.
	ParentOSlet int
}

// Table is one OSlet's process table: the processes its init started, and the
// exit statuses of those that ended recently (kept for Retention so that a
// late wait still finds them). Locking is one mutex: the seed's "simple
// locking inside an OSlet".
type Table struct {
	init      PID
	retention time.Duration
	maxExited int

	mu      sync.Mutex
	live    map[PID]*Process   // guarded by mu
	exited  map[PID]exitRecord // guarded by mu
	order   []exitedAt         // exited, oldest first; guarded by mu
	early   map[PID]earlyExit  // reaped before Add; guarded by mu
	waiters map[PID][]chan ExitStatus
}

type earlyExit struct {
	status ExitStatus
	at     time.Time
}

// earlyWindow bounds how long a reaped child unknown to the table may still be
// claimed by Add: far longer than fork-to-Add, far shorter than PID reuse.
const earlyWindow = 5 * time.Second

type exitedAt struct {
	pid PID
	at  time.Time
}

type exitRecord struct {
	status ExitStatus
	at     time.Time
}

// NewTable returns the process table of the OSlet whose init is init.
func NewTable(init PID) *Table {
	return &Table{
		init:      init,
		retention: 10 * time.Minute,
		maxExited: 4096,
		live:      map[PID]*Process{},
		exited:    map[PID]exitRecord{},
		early:     map[PID]earlyExit{},
		waiters:   map[PID][]chan ExitStatus{},
	}
}

// Add records a process the init has just started. If the reaper already saw
// it exit (a fast /bin/true), the exit is recorded at once.
func (t *Table) Add(p Process) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.early[p.PID]; ok {
		delete(t.early, p.PID)
		t.finishLocked(p.PID, e.status)
		return
	}
	cp := p
	t.live[p.PID] = &cp
}

// Reaped records that the init reaped pid, which ended with status. A child
// the table does not know is either an orphan re-parented to the init, or one
// the init started whose Add has not run yet; it is kept both ways.
func (t *Table) Reaped(pid PID, status ExitStatus) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.live[pid]; ok {
		delete(t.live, pid)
		t.finishLocked(pid, status)
		return
	}
	now := time.Now()
	for pid, e := range t.early {
		if now.Sub(e.at) > earlyWindow {
			delete(t.early, pid)
		}
	}
	t.early[pid] = earlyExit{status, now}
	t.finishLocked(pid, status)
}

func (t *Table) finishLocked(pid PID, st ExitStatus) {
	for _, ch := range t.waiters[pid] {
		ch <- st
	}
	delete(t.waiters, pid)
	now := time.Now()
	t.exited[pid] = exitRecord{status: st, at: now}
	t.order = append(t.order, exitedAt{pid, now})
	for len(t.order) > 0 {
		oldest := t.order[0]
		if len(t.order) <= t.maxExited && now.Sub(oldest.at) < t.retention {
			break
		}
		// A reused PID has a newer record: keep that one.
		if t.exited[oldest.pid].at.Equal(oldest.at) {
			delete(t.exited, oldest.pid)
		}
		t.order = t.order[1:]
	}
}

// Lookup returns the record of a running process started through smpc.
func (t *Table) Lookup(pid PID) (Process, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.live[pid]
	if !ok {
		return Process{}, false
	}
	return *p, true
}

// Exited returns the recorded exit status of pid, if it ended recently.
func (t *Table) Exited(pid PID) (ExitStatus, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	rec, ok := t.exited[pid]
	return rec.status, ok
}

// Wait blocks until pid ends and returns its status. running tells whether
// the process is alive right now (the caller checks /proc); a process that is
// neither running nor recorded gets ErrNoProcess.
func (t *Table) Wait(ctx context.Context, pid PID, running func() bool) (ExitStatus, error) {
	t.mu.Lock()
	if rec, ok := t.exited[pid]; ok {
		t.mu.Unlock()
		return rec.status, nil
	}
	_, known := t.live[pid]
	if !known && !running() {
		t.mu.Unlock()
		return ExitStatus{}, ErrNoProcess
	}
	ch := make(chan ExitStatus, 1)
	t.waiters[pid] = append(t.waiters[pid], ch)
	t.mu.Unlock()
	select {
	case st := <-ch:
		return st, nil
	case <-ctx.Done():
		t.dropWaiter(pid, ch)
		return ExitStatus{}, ctx.Err()
	}
}

// Finish records the end of a process the init did not reap itself (it was
// not the init's child): its status is unknown here.
func (t *Table) Finish(pid PID, st ExitStatus) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.exited[pid]; ok {
		return
	}
	t.finishLocked(pid, st)
}

func (t *Table) dropWaiter(pid PID, ch chan ExitStatus) {
	t.mu.Lock()
	defer t.mu.Unlock()
	ws := t.waiters[pid]
	for i, c := range ws {
		if c == ch {
			t.waiters[pid] = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(t.waiters[pid]) == 0 {
		delete(t.waiters, pid)
	}
}

// Orphan re-parents processes to the init: their remote parent is gone.
func (t *Table) Orphan(pids []PID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, pid := range pids {
		if p, ok := t.live[pid]; ok {
			p.Parent, p.ParentOSlet = t.init, 0
		}
	}
}

// OrphanFrom re-parents every process whose attached parent lived on OSlet
// oslet, which has gone down.
func (t *Table) OrphanFrom(oslet int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, p := range t.live {
		if p.ParentOSlet == oslet {
			p.Parent, p.ParentOSlet = t.init, 0
		}
	}
}

// Policy returns the launch policy recorded for pid, if any.
func (t *Table) Policy(pid PID) (Policy, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.live[pid]; ok && p.Policy != "" {
		return p.Policy, true
	}
	return "", false
}

// Len returns the number of live processes the table records.
func (t *Table) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.live)
}

// waiting counts the waiters blocked on pid.
func (t *Table) waiting(pid PID) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.waiters[pid])
}
