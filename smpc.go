// Package smpc is the programming interface of an SMP cluster: connect to the
// cluster, start processes on any OSlet, signal them, wait for them, and list
// processes and OSlets, from the host or from inside any OSlet. The smpc
// command is built on it.
//
// Every OSlet shares the cluster's one PID namespace, so a process has the
// same PID on every OSlet, and plain kill(2), waitpid(2) and /proc work
// across OSlets for programs inside; smpc on the host speaks the same
// numbers. Inside an OSlet a Client talks to its own OSlet's init, which
// forwards requests over its proxy channels; on the host it talks to the
// OSlets' inits directly (root, or the user who booted the cluster, only).
package smpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/smpc-cluster/smpc/internal/fabric"
	"github.com/smpc-cluster/smpc/internal/ipc"
	"github.com/smpc-cluster/smpc/internal/statedir"
	"github.com/smpc-cluster/smpc/internal/vproc"
)

// PID is a process's ID in the cluster's PID namespace, the same on every
// OSlet.
type PID = vproc.PID

// ExitStatus is how a process ended.
type ExitStatus = vproc.ExitStatus

// Process describes one process of the cluster.
type Process = fabric.Process

// OSletStatus describes one OSlet.
type OSletStatus = fabric.OSletStatus

// Errors that calls return, for errors.Is.
var (
	ErrDown       = fabric.ErrDown        // the OSlet is down
	ErrNoProcess  = fabric.ErrNoProcess   // no such process
	ErrPermission = fabric.ErrPermission  // not allowed
	ErrNotFound   = fabric.ErrNotFound    // program not found
	ErrNoExec     = fabric.ErrNoExec      // program not executable
	ErrInvalid    = fabric.ErrInvalid     // bad request (unknown OSlet, bad signal)
	ErrRefused    = fabric.ErrRefused     // refused by the socket rule
	ErrNoCluster  = statedir.ErrNoCluster // no cluster runs on the state dir (from the host)
)

// Client is a connection to a cluster. It is safe for concurrent use.
type Client struct {
	stateDir string
	inside   bool
	self     atomic.Int32 // the caller's OSlet, when inside
	oslets   []int

	// Inside an OSlet, the own init's answer to the hello names the
	// OSlet, the cluster's OSlets and the state dir; it is read at the
	// first call, which rides with the hello, or when one of them is
	// asked for (learn).
	own       *fabric.Caller
	learnOnce sync.Once

	// The cluster's PID 1 holds its IPC namespace; SysV calls from the host
	// run on a thread that enters it, opened at the first such call (most
	// commands make none). Inside an OSlet every process is in it already.
	reaper  int
	ipcOnce sync.Once
	ipcNS   *ipc.Namespace
	ipcErr  error

	mu     sync.Mutex
	conns  map[int]*fabric.Caller // inside: key 0 is the own init
	closed bool
}

// Connect finds the cluster. Inside an OSlet it connects to its own init and
// needs nothing else; on the host stateDir names the cluster ("" for
// $SMPC_STATE_DIR or /run/smpc). A channel's hello is answered with its first
// call: an init that refuses it fails that call.
func Connect(stateDir string) (*Client, error) {
	if conn, err := fabric.Dial(statedir.ClientSocket, true); err == nil {
		c := &Client{inside: true, conns: map[int]*fabric.Caller{}}
		own, err := fabric.Open(conn, fabric.Hello{Role: fabric.RoleClient}, func(error) error { return c.ownDown() })
		if err != nil {
			return nil, fmt.Errorf("connect to own oslet: %w", err)
		}
		c.own, c.conns[0] = own, own
		return c, nil
	}
	dir, err := statedir.Resolve(stateDir)
	if err != nil {
		return nil, err
	}
	var m statedir.Members
	if err := statedir.Read(dir, &m); err != nil {
		return nil, err
	}
	c := &Client{stateDir: dir, conns: map[int]*fabric.Caller{}, oslets: m.Indexes(), reaper: m.Reaper}
	sort.Ints(c.oslets)
	return c, nil
}

// learn reads, inside an OSlet, the own init's answer to the hello, once.
func (c *Client) learn() {
	if !c.inside {
		return
	}
	c.learnOnce.Do(func() {
		if reply, err := c.own.Hello(context.Background()); err == nil {
			c.self.Store(int32(reply.OSlet))
			c.oslets, c.stateDir = reply.OSlets, reply.StateDir
		}
	})
}

// ownDown is the error of a call whose channel to the own init broke.
func (c *Client) ownDown() error {
	if k := c.self.Load(); k != 0 {
		return fabric.DownError(int(k))
	}
	return fabric.Errorf(fabric.CodeDown, "this oslet's init is down")
}

// Close closes the client's channels.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	c.ipcOnce.Do(func() {}) // no namespace opened after this; one being opened is waited for
	if c.ipcNS != nil {
		c.ipcNS.Close()
	}
	for k, cc := range c.conns {
		cc.Close()
		delete(c.conns, k)
	}
	return nil
}

// OSlets returns the cluster's OSlet indexes. Inside an OSlet they come with
// the own init's answer to the hello, which this waits for (none if it
// refused).
func (c *Client) OSlets() []int {
	c.learn()
	return c.oslets
}

// Self returns the OSlet the caller runs on, or 0 on the host (and inside
// an OSlet whose init refused the hello).
func (c *Client) Self() int {
	c.learn()
	return int(c.self.Load())
}

// channel returns the channel that serves requests for OSlet k: inside, the
// own init; on the host, OSlet k's init (0: the first OSlet).
func (c *Client) channel(k int) (*fabric.Caller, error) {
	if !c.inside && k == 0 {
		k = c.oslets[0]
	}
	if c.inside {
		k = 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errors.New("smpc: client is closed")
	}
	if cc, ok := c.conns[k]; ok && cc.Err() == nil {
		return cc, nil
	}
	if c.inside {
		return nil, c.ownDown()
	}
	if !c.known(k) {
		return nil, fabric.Errorf(fabric.CodeInvalid, "oslet %d does not exist (the cluster has oslets %v)", k, c.oslets)
	}
	conn, err := fabric.Dial(statedir.HostSocket(c.stateDir, k), true)
	if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
		return nil, fabric.DownError(k)
	}
	if err != nil {
		return nil, fmt.Errorf("connect to oslet %d: %w", k, err)
	}
	cc, err := fabric.Open(conn, fabric.Hello{Role: fabric.RoleHost, PID: int32(os.Getpid())}, func(error) error { return fabric.DownError(k) })
	if err != nil {
		return nil, c.helloFailed(k, err)
	}
	c.conns[k] = cc
	return cc, nil
}

// helloFailed is the error of a call on a channel whose hello failed: sent
// or answered (k is 0 for the own init, inside).
func (c *Client) helloFailed(k int, err error) error {
	switch {
	case c.inside:
		return fmt.Errorf("connect to own oslet: %w", err)
	case errors.Is(err, fabric.ErrNotAnswering):
		return fabric.NotAnsweringError(k, err.Error())
	case errors.Is(err, fabric.ErrDown) || errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
		return fabric.DownError(k) // it died as it took the channel
	}
	return fmt.Errorf("connect to oslet %d: %w", k, err)
}

func (c *Client) known(k int) bool {
	for _, o := range c.oslets {
		if o == k {
			return true
		}
	}
	return false
}

func (c *Client) call(ctx context.Context, k int, op fabric.Op, req any, files []*os.File, resp any) ([]*os.File, error) {
	cc, err := c.channel(k)
	if err != nil {
		return nil, err
	}
	got, err := cc.Call(ctx, op, req, files, resp)
	if err != nil {
		// The call answered for the hello too: an answered hello
		// returns at once.
		if _, herr := cc.Hello(ctx); herr != nil {
			return nil, c.helloFailed(k, herr)
		}
	}
	return got, err
}

// anyCall makes a call that any OSlet can serve for the whole cluster:
// inside, to the own init; on the host, to the first OSlet that is up.
func (c *Client) anyCall(ctx context.Context, op fabric.Op, req any, files []*os.File, resp any) ([]*os.File, error) {
	if c.inside {
		return c.call(ctx, 0, op, req, files, resp)
	}
	var err error
	for _, k := range c.oslets {
		var got []*os.File
		if got, err = c.call(ctx, k, op, req, files, resp); !errors.Is(err, ErrDown) {
			return got, err
		}
	}
	return nil, err
}

// Signal sends sig to process pid, on whatever OSlet it runs.
func (c *Client) Signal(ctx context.Context, pid PID, sig syscall.Signal) error {
	_, err := c.anyCall(ctx, fabric.OpSignal, fabric.SignalRequest{PID: int32(pid), Signal: int(sig)}, nil, &fabric.Empty{})
	return err
}

// SignalGroup sends sig to the process group whose leader is pgid.
func (c *Client) SignalGroup(ctx context.Context, pgid PID, sig syscall.Signal) error {
	_, err := c.anyCall(ctx, fabric.OpSignal, fabric.SignalRequest{PID: int32(pgid), Group: true, Signal: int(sig)}, nil, &fabric.Empty{})
	return err
}

// Wait blocks until pid ends and returns its status. A process whose OSlet
// goes down ended with it: Wait returns a lost status (SIGKILL, 137) and an
// error matching ErrDown.
func (c *Client) Wait(ctx context.Context, pid PID) (ExitStatus, error) {
	return c.wait(ctx, 0, pid)
}

// wait is Wait for a process that OSlet k started (0: not known). From the
// host the request goes straight to k's init, which holds the status;
// inside, the own init forwards it there.
func (c *Client) wait(ctx context.Context, k int, pid PID) (ExitStatus, error) {
	var reply fabric.WaitReply
	req := fabric.WaitRequest{PID: int32(pid), On: k}
	var err error
	if k != 0 && !c.inside {
		_, err = c.call(ctx, k, fabric.OpWait, req, nil, &reply)
	} else {
		_, err = c.anyCall(ctx, fabric.OpWait, req, nil, &reply)
	}
	if errors.Is(err, ErrDown) {
		return vproc.LostStatus(), err
	}
	return reply.Status, err
}

// Processes lists every process of the cluster; down lists the OSlets that
// could not answer.
func (c *Client) Processes(ctx context.Context) (procs []Process, down []int, err error) {
	var r fabric.ProcessesReply
	_, err = c.anyCall(ctx, fabric.OpProcesses, fabric.ProcessesRequest{Cluster: true}, nil, &r)
	return r.Processes, r.Down, err
}

// fromOwnPID turns a PID of the caller's PID namespace into the cluster's:
// the same inside an OSlet; on the host, the last of the process's NSpid.
func (c *Client) fromOwnPID(pid int) PID {
	if c.inside || pid <= 0 {
		return PID(pid)
	}
	return PID(vproc.ClusterPID(pid))
}

// eachOSlet asks every OSlet at once, from the host. ask returns a merge
// step, run one at a time when ask succeeded; the OSlets that are down come
// back in down, and other failures joined in err.
func (c *Client) eachOSlet(ask func(k int) (merge func(), err error)) (down []int, err error) {
	var errs []error
	fabric.FanOut(c.oslets, ask, func(k int, err error) {
		if errors.Is(err, ErrDown) {
			down = append(down, k)
			return
		}
		errs = append(errs, err)
	})
	sort.Ints(down)
	return down, errors.Join(errs...)
}

// Status describes every OSlet; a down OSlet has Up false.
func (c *Client) Status(ctx context.Context) ([]OSletStatus, error) {
	if c.inside {
		var r fabric.StatusReply
		_, err := c.call(ctx, 0, fabric.OpStatus, fabric.StatusRequest{Cluster: true}, nil, &r)
		return r.OSlets, err
	}
	var out []OSletStatus
	down, err := c.eachOSlet(func(k int) (func(), error) {
		var r fabric.StatusReply
		_, err := c.call(ctx, k, fabric.OpStatus, fabric.StatusRequest{}, nil, &r)
		if err == nil && len(r.OSlets) == 0 {
			err = fmt.Errorf("oslet %d: empty status", k)
		}
		return func() { out = append(out, r.OSlets[0]) }, err
	})
	for _, k := range down {
		out = append(out, OSletStatus{Index: k})
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Index < out[b].Index })
	return out, err
}

// Ping makes a null call to OSlet k (0: the first; inside an OSlet, its own
// init, whatever k).
func (c *Client) Ping(ctx context.Context, k int) error {
	_, err := c.call(ctx, k, fabric.OpPing, fabric.Empty{}, nil, &fabric.Empty{})
	return err
}

// PingPeer asks OSlet from to make count null calls to OSlet to over its
// proxy channel, and returns the time they took: the fabric's own cost.
func (c *Client) PingPeer(ctx context.Context, from, to, count int) (float64, error) {
	var r fabric.PingPeerReply
	_, err := c.call(ctx, from, fabric.OpPingPeer, fabric.PingPeerRequest{To: to, Count: count}, nil, &r)
	return float64(r.Nanos), err
}
