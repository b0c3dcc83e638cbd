package fabric

import "sync"

// Queue is the seed's queued lock: it lets at most a fixed number of peer
// requests run in an OSlet at once and makes the rest wait in arrival order,
// so that all OSlets ganging up on one cannot swamp it.
type Queue struct {
	mu      sync.Mutex
	free    int             // guarded by mu
	active  int             // guarded by mu
	waiting []chan struct{} // FIFO; guarded by mu
}

// NewQueue returns a queue of n slots.
func NewQueue(n int) *Queue { return &Queue{free: n} }

// Acquire takes a slot, waiting its turn behind earlier callers.
func (q *Queue) Acquire() {
	q.mu.Lock()
	if q.free > 0 && len(q.waiting) == 0 {
		q.free--
		q.active++
		q.mu.Unlock()
		return
	}
	ch := make(chan struct{})
	q.waiting = append(q.waiting, ch)
	q.mu.Unlock()
	<-ch // Release hands the slot over directly, so order is kept
}

// TryAcquire takes a slot only if one is free and nobody is waiting.
func (q *Queue) TryAcquire() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.free > 0 && len(q.waiting) == 0 {
		q.free--
		q.active++
		return true
	}
	return false
}

// Release gives a slot back, to the longest waiter if there is one.
func (q *Queue) Release() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.waiting) > 0 {
		ch := q.waiting[0]
		q.waiting = q.waiting[1:]
		close(ch)
		return
	}
	q.free++
	q.active--
}

// Depth returns how many requests wait for a slot, and how many hold one.
func (q *Queue) Depth() (waiting, active int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.waiting), q.active
}
