package oslet

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc/internal/fabric"
)

// The limits that keep an init alive whatever the processes of its OSlet do
// on its client socket, which any user may connect to. Each bounds what
// a client can make the init hold: without them a user could exhaust the
// init's threads (the OSlet's pids limit) or memory (its memory limit),
// and the init's death ends its OSlet. Past a limit a client waits (its
// connect or its sends block) or gets EAGAIN; the init and the other
// clients carry on. docs/failure.md states them.
const (
	// maxPendingHellos bounds the client channels that have connected and
	// not said hello; more wait in the listen backlog. Each costs a
	// goroutine and a descriptor for at most fabric.HelloTimeout. One user
	// (root aside) may hold userPendingHellos of them; a connection past
	// that is closed at once, so that one user's silent connections never
	// keep the others' from being accepted.
	maxPendingHellos  = 1024
	userPendingHellos = 128
	// maxClientChannels bounds the open client channels, userChannels one
	// user's (root aside); a hello past either is refused with EAGAIN.
	maxClientChannels = 4096
	userChannels      = 1024
	// maxClientRequests bounds the client requests being served at once,
	// every channel together; channelRequests bounds one channel's share.
	// A channel is not read while its share or the whole is taken.
	maxClientRequests = 1024
	channelRequests   = 64
	// maxPendingWaits bounds the waits that are blocked until a process
	// ends (a wait gives its request slot back while it blocks); a wait
	// past it fails with EAGAIN.
	maxPendingWaits = 8192
)

// clientLimits are the shared counters of those limits.
type clientLimits struct {
	hellos       chan struct{}
	userHellos   *perUser
	channels     *fabric.Budget
	userChannels *perUser
	requests     *fabric.Queue
	waits        *fabric.Budget
}

func newClientLimits() clientLimits {
	return clientLimits{
		hellos:       make(chan struct{}, maxPendingHellos),
		userHellos:   newPerUser(userPendingHellos),
		channels:     fabric.NewBudget(maxClientChannels),
		userChannels: newPerUser(userChannels),
		requests:     fabric.NewQueue(maxClientRequests),
		waits:        fabric.NewBudget(maxPendingWaits),
	}
}

// perUser counts what each user holds of something, up to a limit that
// root is exempt from.
type perUser struct {
	mu    sync.Mutex
	limit int
	held  map[uint32]int
}

func newPerUser(limit int) *perUser { return &perUser{limit: limit, held: map[uint32]int{}} }

// TryAcquire takes one for uid if it holds fewer than the limit.
func (p *perUser) TryAcquire(uid uint32) bool {
	if uid == 0 {
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.held[uid] >= p.limit {
		return false
	}
	p.held[uid]++
	return true
}

// Release gives back one that TryAcquire took for uid.
func (p *perUser) Release(uid uint32) {
	if uid == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.held[uid]--; p.held[uid] <= 0 {
		delete(p.held, uid)
	}
}

// busy is the error of a request refused by a limit.
func (i *Init) busy(what string, limit int) error {
	return fabric.AsError(fmt.Errorf("oslet %d: %s (at most %d): %w", i.cfg.Index, what, limit, unix.EAGAIN))
}
