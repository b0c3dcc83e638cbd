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

// heartbeat is how often an init checks each outbound proxy channel. A peer
// that dies closes its sockets, which the inbound channel sees at once; the
// heartbeat also catches the outbound side, and a peer that is alive but
// does not answer (stopped, or hung): one that leaves missedBeats pings in
// a row unanswered for beatTimeout each is reported as not answering, and
// its channel closed, failing every call pending on it. A stall shorter
// than that, under load, passes: the bound is about 4 s. A channel on
// which the peer answered within the last heartbeat is not pinged, and an
// idle one once a second: each ping wakes two inits, and an idle cluster
// should cost nothing measurable.
const (
	heartbeat   = time.Second
	beatTimeout = time.Second
	missedBeats = 3
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

func (i *Init) keep(p *peer) {
	wasUp := true
	missed := 0
	for {
		// Every init beats on the same wall-clock instants, once a
		// second: the timers of all its peers' goroutines fire as one
		// wake-up, and the pings and answers of the whole cluster come in
		// one burst, so that the idle cost of an OSlet grows little with
		// the number of its peers. A ping that went unanswered (for
		// beatTimeout) is followed by the next at once, so that a hang is
		// reported within missedBeats timeouts of the first.
		now := time.Now()
		wait := now.Truncate(heartbeat).Add(heartbeat).Sub(now)
		if missed > 0 {
			wait = 0
		}
		beat := time.NewTimer(wait)
		select {
		case <-i.ctx.Done():
			beat.Stop()
			return // the init is stopping
		case <-beat.C:
		}
		if !p.up() {
			missed = 0 // a down peer is dialled once a beat, not at once
			if wasUp {
				i.log.Warn("peer down", "peer", p.index)
				i.table.OrphanFrom(p.index)
				wasUp = false
			}
			if p.dial(i.cfg.Index) != nil {
				continue
			}
			i.log.Info("peer up", "peer", p.index)
		}
		wasUp = true
		if c := p.caller(); c != nil && time.Since(c.Answered()) < heartbeat {
			missed = 0
			continue // alive: it answered a call since the last beat
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
