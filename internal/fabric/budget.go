package fabric

import "sync"

// Budget is an amount (bytes, say) that many users draw on and give back;
// a draw that does not fit fails at once rather than waiting, so that one
// party's excess is refused instead of queued behind.
type Budget struct {
	mu        sync.Mutex
	total     int
	available int
}

// NewBudget returns a budget of total.
func NewBudget(total int) *Budget { return &Budget{total: total, available: total} }

// TryAcquire draws n if that much is left.
func (b *Budget) TryAcquire(n int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n > b.available {
		return false
	}
	b.available -= n
	return true
}

// Release gives back n drawn by TryAcquire.
func (b *Budget) Release(n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.available += n
}

// Available returns what is left.
func (b *Budget) Available() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.available
}
