package oslet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc/internal/fabric"
	"github.com/smpc-cluster/smpc/internal/vproc"
)

// caller is who sent a request, as this init knows them.
type caller struct {
	role   fabric.Role
	from   int // the peer's OSlet, for RolePeer
	cred   fabric.Cred
	local  int // the caller's PID in this OSlet, for RoleClient
	conn   *fabric.Conn
	ctx    context.Context // ends when the channel closes
	origin int             // OSlet the caller lives on; 0 the host
}

// serveChannel serves a channel accepted on the client socket (clients,
// from a process of user uid) or the host socket.
func (i *Init) serveChannel(fd int, clients bool, uid uint32) {
	var who caller
	counted := false
	conn, _, err := fabric.AcceptConn(fd, func(h *fabric.Hello, cred *unix.Ucred) (bool, *fabric.HelloReply, error) {
		switch {
		case clients && h.Role == fabric.RoleClient:
			if !i.limits.userChannels.TryAcquire(cred.Uid) {
				return false, nil, i.busy(fmt.Sprintf("too many channels from uid %d", cred.Uid), userChannels)
			}
			if !i.limits.channels.TryAcquire(1) {
				i.limits.userChannels.Release(cred.Uid)
				return false, nil, i.busy("too many channels from this OSlet's processes", maxClientChannels)
			}
			counted = true
			who = caller{role: fabric.RoleClient, local: int(cred.Pid), origin: i.cfg.Index,
				cred: fabric.Cred{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid}}
		case !clients && cred.Uid != 0 && cred.Uid != i.cfg.Owner:
			return false, nil, fabric.Errorf(fabric.CodePermission, "oslet %d: uid %d may not use the host socket (root and uid %d only)", i.cfg.Index, cred.Uid, i.cfg.Owner)
		case !clients && h.Role == fabric.RolePeer:
			if _, ok := i.peers[h.From]; !ok {
				return false, nil, fabric.Errorf(fabric.CodeInvalid, "oslet %d: no peer oslet %d in this cluster", i.cfg.Index, h.From)
			}
			who = caller{role: fabric.RolePeer, from: h.From, origin: h.From}
			i.peers[h.From].nudge() // back after a failure: dial it now, not at the next redial
		case !clients && h.Role == fabric.RoleHost:
			who = caller{role: fabric.RoleHost, cred: fabric.Cred{UID: cred.Uid, GID: cred.Gid, PID: h.PID}}
		default:
			return false, nil, fabric.Errorf(fabric.CodeInvalid, "oslet %d: role %q is not served on this socket", i.cfg.Index, h.Role)
		}
		return who.role == fabric.RolePeer, &fabric.HelloReply{OSlet: i.cfg.Index, Cluster: i.cfg.Cluster, OSlets: i.oslets(),
			StateDir: i.cfg.StateDir, InitPID: int32(i.pid)}, nil
	})
	if clients {
		i.limits.userHellos.Release(uid)
		<-i.limits.hellos
	}
	if counted {
		defer i.limits.channels.Release(1)
		defer i.limits.userChannels.Release(who.cred.UID)
	}
	if err != nil {
		return
	}
	if who.role != fabric.RolePeer {
		if groups, err := conn.PeerGroups(); err == nil {
			who.cred.Groups = groups
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	who.conn, who.ctx = conn, ctx
	cfg := fabric.ServeConfig{Inline: func(op fabric.Op) bool { return op == fabric.OpPing || op == fabric.OpSignal }}
	switch who.role {
	case fabric.RolePeer:
		cfg.Queue = i.queue
	case fabric.RoleClient:
		cfg.Queue, cfg.InFlight = i.limits.requests, channelRequests
	}
	cfg.Closed = func() {
		cancel()
		i.channelClosed(&who)
	}
	fabric.Serve(conn, func(r *fabric.Request) (any, []*os.File, error) { return i.handle(&who, r) }, cfg)
	conn.Close()
}

// channelClosed re-parents to their inits the processes whose attached
// parent was this channel, and after a peer's channel, everything whose
// parent lived on that peer.
func (i *Init) channelClosed(who *caller) {
	if who.role == fabric.RolePeer {
		i.table.OrphanFrom(who.from)
		if p := i.peers[who.from]; p != nil {
			p.down(fmt.Errorf("channel from oslet %d closed", who.from))
		}
		return
	}
	i.mu.Lock()
	procs := i.attached[who.conn]
	delete(i.attached, who.conn)
	i.mu.Unlock()
	byOSlet := map[int][]int32{}
	for _, a := range procs {
		byOSlet[a.oslet] = append(byOSlet[a.oslet], int32(a.pid))
	}
	for k, list := range byOSlet {
		if k == i.cfg.Index {
			i.table.Orphan(toPIDs(list))
		} else if p := i.peers[k]; p != nil {
			go i.notifyOrphans(p, list)
		}
	}
}

// notifyOrphans tells peer p that the remote parent of its processes pids
// is gone, so that their ends are kept for a later wait. A peer that is down
// took them with it; any other failure is logged, since their statuses then
// wait for a parent that will not come.
func (i *Init) notifyOrphans(p *peer, pids []int32) {
	ctx, cancel := context.WithTimeout(i.ctx, 10*time.Second)
	defer cancel()
	_, err := p.call(ctx, fabric.OpOrphan, fabric.OrphanRequest{PIDs: pids}, nil, &fabric.Empty{})
	if err != nil && !errors.Is(err, fabric.ErrDown) && i.ctx.Err() == nil {
		i.log.Warn("tell a peer its processes lost their parent", "peer", p.index, "pids", len(pids), "err", err)
	}
}

func toPIDs(list []int32) []vproc.PID {
	out := make([]vproc.PID, len(list))
	for n, p := range list {
		out[n] = vproc.PID(p)
	}
	return out
}

func (i *Init) oslets() []int {
	var ks []int
	for _, o := range i.cfg.Plan.OSlets {
		ks = append(ks, o.Index)
	}
	return ks
}

func (i *Init) handle(who *caller, r *fabric.Request) (any, []*os.File, error) {
	h, ok := handlers[r.Op]
	if !ok {
		return nil, nil, fabric.Errorf(fabric.CodeInvalid, "oslet %d: %s is not a request", i.cfg.Index, r.Op)
	}
	return h(i, who, r)
}

// handlerFunc serves one kind of request.
type handlerFunc func(i *Init, who *caller, r *fabric.Request) (any, []*os.File, error)

// handler decodes a request's body into a Req before serve sees it, and
// answers a body that does not decode as an invalid request.
func handler[Req any](serve func(i *Init, who *caller, r *fabric.Request, req *Req) (any, []*os.File, error)) handlerFunc {
	return func(i *Init, who *caller, r *fabric.Request) (any, []*os.File, error) {
		var req Req
		if err := r.Decode(&req); err != nil {
			return nil, nil, fabric.Errorf(fabric.CodeInvalid, "oslet %d: %s: %v", i.cfg.Index, r.Op, err)
		}
		// Decoded: a handler that blocks (a wait) holds the request, not
		// the frame's body, up to 128 KiB of it.
		r.Body = nil
		return serve(i, who, r, &req)
	}
}

// handlers are the requests an init serves, by operation.
var handlers = map[fabric.Op]handlerFunc{
	fabric.OpPing: handler(func(i *Init, who *caller, r *fabric.Request, _ *fabric.Empty) (any, []*os.File, error) {
		return fabric.Empty{}, nil, nil
	}),
	fabric.OpSpawn: handler(func(i *Init, who *caller, r *fabric.Request, req *fabric.SpawnRequest) (any, []*os.File, error) {
		pid, k, err := i.spawn(who, r, req)
		return fabric.SpawnReply{PID: int32(pid), OSlet: k}, nil, err
	}),
	fabric.OpSignal: handler(func(i *Init, who *caller, r *fabric.Request, req *fabric.SignalRequest) (any, []*os.File, error) {
		return fabric.Empty{}, nil, i.signal(who, req)
	}),
	fabric.OpWait: handler(func(i *Init, who *caller, r *fabric.Request, req *fabric.WaitRequest) (any, []*os.File, error) {
		r.ReleaseSlot() // waiting must not hold a slot of the queued lock
		if who.role == fabric.RoleClient {
			if !i.limits.waits.TryAcquire(1) {
				return nil, nil, i.busy("too many waits pending", maxPendingWaits)
			}
			defer i.limits.waits.Release(1)
		}
		i.waits.Add(1)
		defer i.waits.Add(-1)
		st, err := i.wait(who, req)
		return fabric.WaitReply{Status: st}, nil, err
	}),
	fabric.OpOrphan: handler(func(i *Init, who *caller, r *fabric.Request, req *fabric.OrphanRequest) (any, []*os.File, error) {
		i.table.Orphan(toPIDs(req.PIDs))
		return fabric.Empty{}, nil, nil
	}),
	fabric.OpProcesses: handler(func(i *Init, who *caller, r *fabric.Request, req *fabric.ProcessesRequest) (any, []*os.File, error) {
		return i.processes(who, req.Cluster), nil, nil
	}),
	fabric.OpStatus: handler(func(i *Init, who *caller, r *fabric.Request, req *fabric.StatusRequest) (any, []*os.File, error) {
		return i.status(who, req.Cluster), nil, nil
	}),
	fabric.OpPingPeer: handler(func(i *Init, who *caller, r *fabric.Request, req *fabric.PingPeerRequest) (any, []*os.File, error) {
		if who.role == fabric.RolePeer {
			return nil, nil, fabric.Errorf(fabric.CodeInvalid, "oslet %d: ping-peer is not served to peers", i.cfg.Index)
		}
		return i.pingPeer(who.ctx, req)
	}),
	fabric.OpShm: handler(func(i *Init, who *caller, r *fabric.Request, req *fabric.ShmRequest) (any, []*os.File, error) {
		return i.shmServe(who, req)
	}),
	fabric.OpDevice: handler(func(i *Init, who *caller, r *fabric.Request, req *fabric.DeviceRequest) (any, []*os.File, error) {
		return i.deviceServe(who, req)
	}),
}

// forwardTo returns the peer that owns OSlet k for a request that must go
// there, or nil when k is this OSlet. Requests from peers are never
// forwarded: the OSlet that took a request from its caller routes it.
func (i *Init) forwardTo(who *caller, k int) (*peer, error) {
	if k == i.cfg.Index {
		return nil, nil
	}
	if who.role == fabric.RolePeer {
		return nil, fabric.Errorf(fabric.CodeInvalid, "oslet %d: request for oslet %d arrived from a peer", i.cfg.Index, k)
	}
	p, ok := i.peers[k]
	if !ok {
		return nil, fabric.Errorf(fabric.CodeInvalid, "oslet %d does not exist (the cluster has oslets %v)", k, i.oslets())
	}
	return p, nil
}

// forwardable is a request an init may forward to another in its caller's
// name.
type forwardable[R any] interface {
	*R
	Behalf() *fabric.OnBehalf
}

// forwardAs is the one way an init hands a request on to the init that
// must serve it: a copy of req, in the name of cred (the identity this init
// took from the kernel, or from the peer that forwarded it here), with the
// descriptors it carries.
func forwardAs[Reply any, R any, PR forwardable[R]](ctx context.Context, p *peer, op fabric.Op, req PR, cred fabric.Cred, files []*os.File) (Reply, []*os.File, error) {
	fwd := *req
	PR(&fwd).Behalf().Cred = &cred
	var reply Reply
	got, err := p.call(ctx, op, &fwd, files, &reply)
	return reply, got, err
}

// credOf is the identity a request acts with: the kernel's, or for a
// request a peer forwarded, the identity that peer took from the kernel.
func credOf(who *caller, forwarded *fabric.Cred) (fabric.Cred, error) {
	if who.role == fabric.RolePeer {
		if forwarded == nil {
			return fabric.Cred{}, fabric.Errorf(fabric.CodeInvalid, "request from oslet %d carries no credentials", who.from)
		}
		return *forwarded, nil
	}
	return who.cred, nil
}

// mayControl applies kill(2)'s rule: root, or a sender whose uid is the
// target's real or saved uid.
func mayControl(cred fabric.Cred, s procStat) bool {
	return cred.UID == 0 || cred.UID == s.uidReal || cred.UID == s.uidSav
}

// signal sends a signal in the name of the caller. Every OSlet shares the
// cluster's PID namespace, so the init that took the request delivers it
// itself, whatever OSlet the target runs on, after kill(2)'s own check of
// the caller's right to.
func (i *Init) signal(who *caller, req *fabric.SignalRequest) error {
	cred, err := credOf(who, req.Cred)
	if err != nil {
		return err
	}
	if req.Signal < 0 || req.Signal > 64 {
		return fabric.Errorf(fabric.CodeInvalid, "oslet %d: invalid signal %d", i.cfg.Index, req.Signal)
	}
	sig := unix.Signal(req.Signal)
	target := int(req.PID)
	if target <= 0 {
		return fabric.Errorf(fabric.CodeInvalid, "oslet %d: kill %d: invalid pid", i.cfg.Index, target)
	}
	if !req.Group {
		s, err := readProc(target)
		if err != nil || s.state == "Z" {
			if k, lost := vproc.WasLost(vproc.LostFile(i.cfg.StateDir), vproc.PID(target)); lost {
				return fabric.Errorf(fabric.CodeNoProcess, "kill %d: no such process (it was lost with oslet %d, which is down)", target, k)
			}
			return fabric.Errorf(fabric.CodeNoProcess, "kill %d: no such process", target)
		}
		if i.isInit(target) {
			return fabric.Errorf(fabric.CodePermission, "kill %d: an OSlet's init takes no signals (use smpc shutdown)", target)
		}
		if !mayControl(cred, s) {
			return fabric.Errorf(fabric.CodePermission, "kill %d: operation not permitted", target)
		}
		if err := unix.Kill(target, sig); err != nil {
			return fabric.Errorf(fabric.CodeNoProcess, "kill %d: %v", target, err)
		}
		return nil
	}
	if i.isInit(target) {
		// kill(-1) would reach every process of the cluster.
		return fabric.Errorf(fabric.CodePermission, "kill -%d: an OSlet's init leads no process group that may be signalled", target)
	}
	if cred.UID == 0 {
		// root may signal every member: the kernel's own group kill, with
		// no walk of /proc (smpc run forwards each signal it gets).
		if err := unix.Kill(-target, sig); err != nil {
			return fabric.Errorf(fabric.CodeNoProcess, "kill -%d: no such process group", target)
		}
		return nil
	}
	// A group: like kill(2), succeed if any member could be signalled.
	found, sent := false, false
	for _, n := range listPIDs() {
		s, err := readProc(n)
		if err != nil || s.pgrp != target || i.isInit(n) {
			continue
		}
		found = true
		if mayControl(cred, s) && unix.Kill(n, sig) == nil {
			sent = true
		}
	}
	switch {
	case !found:
		return fabric.Errorf(fabric.CodeNoProcess, "kill -%d: no such process group", target)
	case !sent:
		return fabric.Errorf(fabric.CodePermission, "kill -%d: operation not permitted", target)
	}
	return nil
}

// isInit reports whether pid is an OSlet's init or the cluster's PID 1.
func (i *Init) isInit(pid int) bool {
	if pid == 1 || pid == int(i.pid) {
		return true
	}
	for _, p := range i.peers {
		if p.initPID() == pid {
			return true
		}
	}
	return false
}

// wait waits for a process. Its status is known to the init that started
// it (the process's parent, or its subreaper once orphaned); a process that
// another process started reports to that parent, and here ends with an
// unknown status. The init that took the request finds the one that knows:
// itself, the init of the OSlet the process runs on, or, for a process
// already gone, whichever peer recorded its end.
func (i *Init) wait(who *caller, req *fabric.WaitRequest) (vproc.ExitStatus, error) {
	pid := vproc.PID(req.PID)
	cred, err := credOf(who, req.Cred)
	if err != nil {
		return vproc.ExitStatus{}, err
	}
	forward := func(p *peer) (vproc.ExitStatus, error) {
		reply, _, err := forwardAs[fabric.WaitReply](who.ctx, p, fabric.OpWait, req, cred, nil)
		return reply.Status, err
	}
	_, known := i.table.Lookup(pid)
	_, ended := i.table.Exited(pid)
	if !known && !ended && who.role != fabric.RolePeer {
		// The init that is pid's parent (it started it, or the process was
		// orphaned to it) reaps it and knows its status. A zombie still
		// names its parent; a process already reaped is asked of every
		// peer.
		owner, gone := req.On, false
		if owner == 0 || owner == i.cfg.Index {
			owner, gone = i.parentInit(pid)
		}
		switch {
		case owner != 0 && owner != i.cfg.Index:
			if p := i.peers[owner]; p != nil {
				return forward(p)
			}
		case gone:
			for _, p := range i.peers {
				if st, err := forward(p); !errors.Is(err, fabric.ErrNoProcess) && !errors.Is(err, fabric.ErrDown) {
					return st, err
				}
			}
		}
	}
	// Root may wait for any process, one this init knows needs no watch,
	// and one that ended is in the table: the /proc reads (its status is
	// the dearest file there) are for the others.
	if !ended && (!known || cred.UID != 0) {
		if s, err := readProc(int(pid)); err == nil && s.state != "Z" {
			if !mayControl(cred, s) {
				return vproc.ExitStatus{}, fabric.Errorf(fabric.CodePermission, "oslet %d: wait %d: operation not permitted", i.cfg.Index, pid)
			}
			if !known && s.ppid != int(i.pid) {
				// Not this init's child: its status goes to its own parent,
				// and its end is all this init can see.
				i.watchForeign(pid)
			}
		}
	}
	st, err := i.table.Wait(who.ctx, pid, func() bool { return alive(int(pid)) })
	if err == vproc.ErrNoProcess {
		if k, lost := vproc.WasLost(vproc.LostFile(i.cfg.StateDir), pid); lost {
			return vproc.LostStatus(), fabric.DownError(k)
		}
		return st, fabric.Errorf(fabric.CodeNoProcess, "wait %d: no such process", pid)
	}
	if err != nil {
		return st, fabric.Errorf(fabric.CodeInternal, "oslet %d: wait %d: %v", i.cfg.Index, pid, err)
	}
	return st, nil
}

// parentInit returns the OSlet whose init is pid's parent, 0 when its parent
// is no init; gone says that pid no longer exists at all.
func (i *Init) parentInit(pid vproc.PID) (oslet int, gone bool) {
	s, err := readStat(int(pid))
	if err != nil {
		return 0, true
	}
	if s.ppid == int(i.pid) {
		return i.cfg.Index, false
	}
	for k, p := range i.peers {
		if p.initPID() == s.ppid {
			return k, false
		}
	}
	return 0, false
}

// watchForeign notices the end of a process the init did not start and is
// not the parent of, through a pidfd: its status goes to its own parent.
func (i *Init) watchForeign(pid vproc.PID) {
	fd, err := unix.PidfdOpen(int(pid), 0)
	if err != nil {
		return
	}
	go func() {
		defer unix.Close(fd)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(fds, -1); err != unix.EINTR {
				break
			}
		}
		// If it ended as our child (the kernel re-parented it to this
		// subreaper first), the reaper records its real status: a
		// zombie of ours waits for it. Otherwise its parent has it.
		// (Once recorded, a status stays: a later Finish is no-op.)
		var info unix.Siginfo
		if unix.Waitid(unix.P_PIDFD, fd, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil) == nil {
			return
		}
		i.table.Finish(pid, vproc.ExitStatus{Unknown: true})
	}()
}

// eachPeer asks every peer at once (fabric.FanOut); failed runs for each
// that could not answer.
func (i *Init) eachPeer(ask func(p *peer) (merge func(), err error), failed func(k int)) {
	ks := make([]int, 0, len(i.peers))
	for k := range i.peers {
		ks = append(ks, k)
	}
	fabric.FanOut(ks, func(k int) (func(), error) { return ask(i.peers[k]) }, func(k int, _ error) { failed(k) })
}

func (i *Init) processes(who *caller, cluster bool) fabric.ProcessesReply {
	reply := fabric.ProcessesReply{Processes: i.localProcesses(), Placements: i.placementList()}
	if !cluster || who.role == fabric.RolePeer {
		return reply
	}
	i.eachPeer(func(p *peer) (func(), error) {
		var r fabric.ProcessesReply
		_, err := p.call(who.ctx, fabric.OpProcesses, fabric.ProcessesRequest{}, nil, &r)
		return func() {
			reply.Processes = append(reply.Processes, r.Processes...)
			reply.Placements = append(reply.Placements, r.Placements...)
		}, err
	}, func(k int) { reply.Down = append(reply.Down, k) })
	// A process placed by a spreading policy runs on another OSlet than
	// the init that placed it: its row comes from there.
	byPID := map[int32]fabric.Placement{}
	for _, pl := range reply.Placements {
		byPID[pl.PID] = pl
	}
	for n := range reply.Processes {
		if pl, ok := byPID[reply.Processes[n].PID]; ok {
			reply.Processes[n].Policy, reply.Processes[n].Note = pl.Policy, pl.Note
		}
	}
	reply.Placements = nil
	slices.Sort(reply.Down)
	slices.SortFunc(reply.Processes, func(a, b fabric.Process) int { return int(a.PID - b.PID) })
	return reply
}

// localProcesses lists the processes in this OSlet's cgroup: a process's
// OSlet is its cgroup.
func (i *Init) localProcesses() []fabric.Process {
	var out []fabric.Process
	for _, n := range i.cg.PIDs() {
		s, err := readProc(n)
		if err != nil {
			continue
		}
		parent := vproc.PID(s.ppid)
		rec, ours := i.table.Lookup(vproc.PID(n))
		if ours && s.ppid == int(i.pid) {
			parent = rec.Parent
		}
		p := fabric.Process{
			PID: int32(n), OSlet: i.cfg.Index, Parent: int32(parent),
			UID: s.uidReal, User: vproc.UserName(s.uidReal), State: s.state,
			CPUTime: float64(s.ticks) / clockTicks, Command: cmdline(n, s.comm),
		}
		if ours {
			p.Policy = string(rec.Policy)
		}
		out = append(out, p)
	}
	return out
}

func (i *Init) localStatus() fabric.OSletStatus {
	waiting, active := i.queue.Depth()
	procs := len(i.cg.PIDs())
	return fabric.OSletStatus{
		Index: i.cfg.Index, Up: true, CPUs: i.self.CPUs.String(),
		MemoryLimit: i.self.Memory, MemoryUsed: i.cg.MemoryUsed(),
		Processes: procs, Load: i.loads.load(i.cfg.Index, int(i.pid)),
		Queue: waiting, Active: active, Protocol: fmt.Sprintf("%d.%d", fabric.Major, fabric.Minor),
		Address: i.cfg.Address, Address6: i.cfg.Address6, InitPID: int(i.pid), Waits: int(i.waits.Load()), OOMKills: i.cg.OOMKills(),
	}
}

func (i *Init) status(who *caller, cluster bool) fabric.StatusReply {
	reply := fabric.StatusReply{OSlets: []fabric.OSletStatus{i.localStatus()}}
	if !cluster || who.role == fabric.RolePeer {
		return reply
	}
	i.eachPeer(func(p *peer) (func(), error) {
		var r fabric.StatusReply
		_, err := p.call(who.ctx, fabric.OpStatus, fabric.StatusRequest{}, nil, &r)
		if err == nil && len(r.OSlets) == 0 {
			err = fmt.Errorf("oslet %d: empty status", p.index)
		}
		return func() { reply.OSlets = append(reply.OSlets, r.OSlets[0]) }, err
	}, func(k int) { reply.OSlets = append(reply.OSlets, fabric.OSletStatus{Index: k, Up: false}) })
	slices.SortFunc(reply.OSlets, func(a, b fabric.OSletStatus) int { return a.Index - b.Index })
	return reply
}

// pingPeer times Count null calls to a peer. It stops when its caller's
// channel closes (ctx), checked between calls: a context on each call would
// add a poll to the very call it times.
func (i *Init) pingPeer(ctx context.Context, req *fabric.PingPeerRequest) (any, []*os.File, error) {
	p, ok := i.peers[req.To]
	if !ok {
		return nil, nil, fabric.Errorf(fabric.CodeInvalid, "oslet %d: no peer oslet %d", i.cfg.Index, req.To)
	}
	if req.Count <= 0 || req.Count > 10_000_000 {
		return nil, nil, fabric.Errorf(fabric.CodeInvalid, "oslet %d: ping count %d out of range", i.cfg.Index, req.Count)
	}
	start := time.Now()
	for n := 0; n < req.Count; n++ {
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		if _, err := p.call(context.Background(), fabric.OpPing, fabric.Empty{}, nil, &fabric.Empty{}); err != nil {
			return nil, nil, err
		}
	}
	return fabric.PingPeerReply{Nanos: time.Since(start).Nanoseconds()}, nil, nil
}
