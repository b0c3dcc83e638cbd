package oslet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/smpc-cluster/smpc/internal/fabric"
)

// heartbeat is how often an init checks an outbound proxy channel while
// some call on it waits for its reply. A peer that dies closes its sockets,
// which the inbound channel sees at once; the heartbeat catches a peer that
// is alive but does not answer (stopped, or hung): one that leaves
// missedBeats pings in a row unanswered for beatTimeout each is reported as
// not answering, and its channel closed, failing every call pending on it.
// A stall shorter than that, under load, passes: the bound is about 3.5 s
// from the call. A channel on which the peer answered within the last
// heartbeat is not pinged, and a channel with no call pending is not
// watched at all: a hung peer that nobody waits on costs nobody anything,
// and is found by the first call that waits on it, so that an idle cluster
// has no timer running. A down peer is dialled again after redialFirst,
// then less and less often, and at once when it says hello again.
const (
	heartbeat   = time.Second
	beatTimeout = time.Second
	missedBeats = 3
	firstBeat   = heartbeat / 2
	redialFirst = heartbeat
	redialMost  = 30 * time.Second
)

// peer is this init's proxy channel to another OSlet.
type peer struct {
	index int
	addr  string
	cpus  int

	mu   sync.Mutex
	c    *fabric.Caller // nil while the peer is down; guarded by mu
	init int            // the peer init's PID in the cluster, from its hello; guarded by mu
	// hung says why the channel was closed when the peer stopped
	// answering; "" when it was not. Guarded by mu.
	hung string

	// wake rouses the channel's keeper: a call started on a quiet
	// channel, the channel went down, or the peer said hello again.
	wake chan struct{}
}

// nudge wakes the keeper without blocking.
func (p *peer) nudge() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// initPID returns the peer init's PID in the cluster.
func (p *peer) initPID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.init
}

func (p *peer) caller() *fabric.Caller {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.c != nil && p.c.Err() != nil {
		p.c = nil
	}
	return p.c
}

// call makes a call over the proxy channel; a down peer fails at once.
func (p *peer) call(ctx context.Context, op fabric.Op, req any, files []*os.File, resp any) ([]*os.File, error) {
	c := p.caller()
	if c == nil {
		return nil, fabric.DownError(p.index)
	}
	return c.Call(ctx, op, req, files, resp)
}

// down drops the channel; pending calls fail with "oslet K is down".
func (p *peer) down(cause error) {
	p.mu.Lock()
	c := p.c
	p.c = nil
	p.mu.Unlock()
	if c != nil {
		c.Close()
	}
	p.nudge()
}

func (p *peer) up() bool { return p.caller() != nil }

// dial opens the proxy channel from OSlet self to p.
func (p *peer) dial(self int) error {
	conn, err := fabric.Dial(p.addr, true)
	if err != nil {
		return err
	}
	reply, err := fabric.Handshake(conn, fabric.Hello{Role: fabric.RolePeer, From: self})
	if err != nil {
		conn.Close()
		return err
	}
	c := fabric.NewCaller(conn, func(error) error {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.hung != "" {
			return fabric.NotAnsweringError(p.index, p.hung)
		}
		return fabric.DownError(p.index)
	})
	p.mu.Lock()
	p.c, p.init, p.hung = c, int(reply.InitPID), ""
	p.mu.Unlock()
	return nil
}

// notAnswering closes the channel of a peer that stopped answering; its
// pending calls fail saying so.
func (p *peer) notAnswering(why string) {
	p.mu.Lock()
	c := p.c
	p.c, p.hung = nil, why
	p.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// connectPeers opens every outbound proxy channel at boot, when every peer
// is already listening, then keeps them: a channel that breaks marks its
// peer down, and is dialled again in case the peer comes back.
func (i *Init) connectPeers() error {
	for _, p := range i.peers {
		var err error
		for try := 0; try < 50; try++ {
			if err = p.dial(i.cfg.Index); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			return fmt.Errorf("oslet %d: connect to oslet %d: %w", i.cfg.Index, p.index, err)
		}
	}
	for _, p := range i.peers {
		go i.keep(p)
	}
	return nil
}

// keep watches p's outbound channel for as long as the init runs: it
// sleeps while the channel is quiet, beats while calls wait on it, and
// dials a down peer again.
func (i *Init) keep(p *peer) {
	wasUp := true
	missed := 0
	redial := redialFirst
	var seen uint64 // calls started on the channel by the last look
	for {
		c := p.caller()
		if c == nil {
			if wasUp {
				i.log.Warn("peer down", "peer", p.index)
				i.table.OrphanFrom(p.index)
				wasUp, redial = false, redialFirst
			}
			if !i.pause(p, redial, true) {
				return
			}
			if err := p.dial(i.cfg.Index); err != nil {
				redial = min(2*redial, redialMost)
				continue
			}
			i.log.Info("peer up", "peer", p.index)
			wasUp, missed, seen = true, 0, 0
			continue
		}
		wait := time.Duration(0) // after a missed ping, the next at once
		if missed == 0 {
			// Every init beats on the same wall-clock instants, so that
			// its timers for all its busy peers fire as one wake-up.
			now := time.Now()
			wait = now.Truncate(heartbeat).Add(heartbeat).Sub(now)
			select {
			case <-p.wake: // a stale wake-up would only cost a look
			default:
			}
			if c.Quiet(seen, p.wake) && p.caller() == c {
				// Nobody waits on the peer: sleep until a call starts,
				// the channel goes down or the peer says hello.
				select {
				case <-i.ctx.Done():
					return
				case <-p.wake:
				}
				if p.caller() != c {
					continue
				}
				wait = firstBeat // a call that took less is not worth a ping
			}
		}
		if !i.pause(p, wait, false) {
			return
		}
		started, pending := c.Calls()
		seen = started
		if pending == 0 || time.Since(c.Answered()) < heartbeat {
			missed = 0
			continue // nobody waits, or the peer answered since the last beat
		}
		ctx, cancel := context.WithTimeout(i.ctx, beatTimeout)
		_, err := p.call(ctx, fabric.OpPing, fabric.Empty{}, nil, &fabric.Empty{})
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			missed = 0
			continue
		}
		if missed++; missed >= missedBeats {
			why := fmt.Sprintf("%d heartbeats in a row unanswered for %v each", missed, beatTimeout)
			i.log.Warn("peer not answering", "peer", p.index, "why", why)
			p.notAnswering(why)
			missed = 0
		}
	}
}

// pause waits for d, or until the init stops (false); with woken, also
// until the keeper is nudged.
func (i *Init) pause(p *peer, d time.Duration, woken bool) bool {
	if d <= 0 {
		return i.ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	var wake chan struct{}
	if woken {
		wake = p.wake
	}
	select {
	case <-i.ctx.Done():
		return false
	case <-t.C:
	case <-wake:
	}
	return true
}
