package oslet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc/internal/fabric"
	"github.com/smpc-cluster/smpc/internal/ipc"
	"github.com/smpc-cluster/smpc/internal/shm"
)

// ipcState is the init's part in System V IPC: the table of the objects
// this OSlet is home to, and what it must clean up for its own callers.
//
// A caller's channel is its session: the init stamps every get with a token
// naming the channel, and when the channel closes (the process is gone) it
// releases that token here and at every other home it reached. The init
// also maps each remote object its callers got, so that when a home dies it
// can mark the object ended for them: nobody else would wake a process
// asleep on an object whose home is gone.
type ipcState struct {
	table *ipc.Registry

	serial atomic.Uint64 // the last token issued

	mu     sync.Mutex
	homes  map[uint64][]int       // token → other homes it holds sessions at
	remote map[int32]*ipc.Segment // objects of other homes that callers here got
}

func newIPCState(self int) *ipcState {
	return &ipcState{table: ipc.NewRegistry(self), homes: map[uint64][]int{}, remote: map[int32]*ipc.Segment{}}
}

// newToken names a caller's channel for the sessions it opens.
func (i *Init) newToken() uint64 { return ipc.MakeToken(i.cfg.Index, i.ipc.serial.Add(1)) }

// homeOf is the OSlet that holds the object a request names.
func (i *Init) homeOf(key, id int32, byKey bool) int {
	switch {
	case !byKey && id != 0:
		return ipc.HomeOfID(id)
	case key == ipc.Private:
		return i.cfg.Index
	}
	return ipc.HomeOfKey(key, i.oslets())
}

// ipcError names this OSlet in an error of the IPC tables; the reply keeps
// the errno it wraps (fabric.AsError).
func (i *Init) ipcError(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("oslet %d: %w", i.cfg.Index, err)
}

func toIPCCred(c fabric.Cred) ipc.Cred {
	return ipc.Cred{UID: c.UID, GID: c.GID, Groups: c.Groups, PID: c.PID}
}

// ipcGet serves msgget and semget: at the home, or forwarded there with the
// caller's credentials and token.
func (i *Init) ipcGet(who *caller, req *fabric.IPCGetRequest) (any, []*os.File, error) {
	cred, err := credOf(who, req.Cred)
	if err != nil {
		return nil, nil, err
	}
	token := req.Token
	if who.role != fabric.RolePeer {
		token = who.token
	}
	if req.ID < 0 {
		return nil, nil, fabric.Errorf(fabric.CodeInvalid, "oslet %d: %s id %d: invalid", i.cfg.Index, req.Kind, req.ID)
	}
	home := i.homeOf(req.Key, req.ID, false)
	p, err := i.forwardTo(who, home)
	if err != nil {
		return nil, nil, err
	}
	if p == nil {
		res, kept, err := i.ipc.table.Get(ipc.GetRequest{Kind: req.Kind, Key: req.Key, ID: req.ID, Flags: req.Flags,
			NSems: req.NSems, Size: req.Size, Cred: toIPCCred(cred), Token: token})
		if err != nil {
			return nil, nil, i.ipcError(err)
		}
		// The table keeps its descriptors; the reply sends, and closes, copies.
		var files []*os.File
		for _, f := range kept {
			dup, err := dupFile(f)
			if err != nil {
				fabric.CloseAll(files)
				return nil, nil, i.ipcError(fmt.Errorf("%s %d: %w", req.Kind, res.ID, err))
			}
			files = append(files, dup)
		}
		return fabric.IPCGetReply{ID: res.ID, Slot: res.Slot, Home: i.cfg.Index}, files, nil
	}
	fwd := *req
	fwd.Cred, fwd.Token = &cred, token
	var reply fabric.IPCGetReply
	files, err := p.call(who.ctx, fabric.OpIPCGet, fwd, nil, &reply)
	if err != nil {
		fabric.CloseAll(files)
		return nil, nil, err
	}
	i.noteSession(token, home)
	if len(files) > 0 {
		i.keepRemote(reply.ID, files[0])
	}
	return reply, files, nil
}

// noteSession records that token holds sessions at home, for release.
func (i *Init) noteSession(token uint64, home int) {
	s := i.ipc
	s.mu.Lock()
	defer s.mu.Unlock()
	if !slices.Contains(s.homes[token], home) {
		s.homes[token] = append(s.homes[token], home)
	}
}

// keepRemote maps a remote object once, so that the init can end it for
// its callers if its home dies. Objects since removed are let go here.
func (i *Init) keepRemote(id int32, f *os.File) {
	s := i.ipc
	s.mu.Lock()
	defer s.mu.Unlock()
	for oid, seg := range s.remote {
		if seg.Removed() {
			seg.Unmap()
			delete(s.remote, oid)
		}
	}
	if _, ok := s.remote[id]; ok {
		return
	}
	if seg, err := ipc.Map(f); err == nil {
		s.remote[id] = seg
	}
}

// ipcCtl serves IPC_STAT, IPC_SET and IPC_RMID at the object's home.
func (i *Init) ipcCtl(who *caller, req *fabric.IPCCtlRequest) (any, []*os.File, error) {
	cred, err := credOf(who, req.Cred)
	if err != nil {
		return nil, nil, err
	}
	home := i.homeOf(req.Key, req.ID, req.ByKey)
	p, err := i.forwardTo(who, home)
	if err != nil {
		return nil, nil, err
	}
	if p != nil {
		fwd := *req
		fwd.Cred = &cred
		var reply fabric.IPCCtlReply
		_, err := p.call(who.ctx, fabric.OpIPCCtl, fwd, nil, &reply)
		return reply, nil, err
	}
	t := i.ipc.table
	id := req.ID
	if req.ByKey {
		if id, err = t.IDOfKey(req.Kind, req.Key); err != nil {
			return nil, nil, i.ipcError(err)
		}
	}
	var info ipc.Info
	switch req.Cmd {
	case fabric.IPCStat:
		info, err = t.Stat(req.Kind, id, toIPCCred(cred))
	case fabric.IPCSet:
		if req.Set == nil {
			return nil, nil, fabric.Errorf(fabric.CodeInvalid, "oslet %d: %s %d: set without values", i.cfg.Index, req.Kind, id)
		}
		info, err = t.Set(req.Kind, id, toIPCCred(cred), *req.Set)
	case fabric.IPCRemove:
		err = t.Remove(req.Kind, id, toIPCCred(cred))
		info = ipc.Info{Kind: req.Kind, ID: id, Key: req.Key, Home: i.cfg.Index}
	default:
		return nil, nil, fabric.Errorf(fabric.CodeInvalid, "oslet %d: unknown IPC command %q", i.cfg.Index, req.Cmd)
	}
	return fabric.IPCCtlReply{Info: info}, nil, i.ipcError(err)
}

// ipcList lists the objects of this home, and with cluster of every home.
func (i *Init) ipcList(who *caller, cluster bool) fabric.IPCListReply {
	reply := fabric.IPCListReply{Objects: i.ipc.table.List()}
	if !cluster || who.role == fabric.RolePeer {
		return reply
	}
	i.eachPeer(func(p *peer, merge func(func())) {
		var r fabric.IPCListReply
		_, err := p.call(who.ctx, fabric.OpIPCList, fabric.IPCListRequest{}, nil, &r)
		merge(func() {
			if err != nil {
				reply.Down = append(reply.Down, p.index)
				return
			}
			reply.Objects = append(reply.Objects, r.Objects...)
		})
	})
	slices.Sort(reply.Down)
	slices.SortFunc(reply.Objects, func(a, b ipc.Info) int { return int(a.ID - b.ID) })
	return reply
}

// ipcChannelClosed ends the sessions of a caller whose channel closed: here
// and at every home it reached.
func (i *Init) ipcChannelClosed(token uint64) {
	i.ipc.table.Release(token)
	s := i.ipc
	s.mu.Lock()
	homes := s.homes[token]
	delete(s.homes, token)
	s.mu.Unlock()
	for _, k := range homes {
		if p := i.peers[k]; p != nil {
			go p.call(context.Background(), fabric.OpIPCRelease, fabric.IPCReleaseRequest{Tokens: []uint64{token}}, nil, &fabric.Empty{})
		}
	}
}

// ipcPeerDown cleans up after OSlet k died: its processes' sessions here
// end (SEM_UNDO applies), and the objects it was home to end for the
// callers here, who wake with "home oslet k is down".
func (i *Init) ipcPeerDown(k int) {
	i.ipc.table.ReleaseOrigin(k)
	s := i.ipc
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, seg := range s.remote {
		if ipc.HomeOfID(id) == k {
			seg.MarkHomeDown()
			seg.Unmap()
			delete(s.remote, id)
		}
	}
	for token, homes := range s.homes {
		s.homes[token] = slices.DeleteFunc(homes, func(h int) bool { return h == k })
	}
}

// freeMemory is what the OSlet's memory limit leaves: shared memory homed
// here counts against it.
func (i *Init) freeMemory() int64 { return i.self.Memory - i.cg.MemoryUsed() }

// ipcShutdown ends every object this OSlet is home to, so that processes
// elsewhere that use them get "home oslet k is down" at once.
func (i *Init) ipcShutdown() { i.ipc.table.Close() }

// dupFile duplicates a descriptor that the table keeps, for a reply that
// closes what it sends.
func dupFile(f *os.File) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// shmServe serves named shared memory: create at the home, open and remove
// at the object's recorded home, list anywhere (every OSlet sees the same
// /dev/shm).
func (i *Init) shmServe(who *caller, req *fabric.ShmRequest) (any, []*os.File, error) {
	cred, err := credOf(who, req.Cred)
	if err != nil {
		return nil, nil, err
	}
	c := shm.Cred{UID: cred.UID, GID: cred.GID, Groups: cred.Groups}
	if req.Cmd == fabric.ShmList {
		list, err := i.shm.List()
		return fabric.ShmReply{Objects: list}, nil, i.ipcError(err)
	}
	if err := shm.CheckName(req.Name); err != nil {
		return nil, nil, i.ipcError(err)
	}
	home := i.shm.HomeOf(req.Name)
	if req.Cmd == fabric.ShmCreate {
		home = req.On
		if home == 0 {
			home = shm.HomeOfName(req.Name, i.oslets())
		}
	}
	if home == 0 {
		home = i.cfg.Index // made by a program: no home to ask
	}
	p, err := i.forwardTo(who, home)
	if err != nil {
		return nil, nil, err
	}
	if p != nil {
		fwd := *req
		fwd.Cred = &cred
		var reply fabric.ShmReply
		files, err := p.call(who.ctx, fabric.OpShm, fwd, nil, &reply)
		if errors.Is(err, fabric.ErrDown) && req.Cmd == fabric.ShmRemove {
			// The home died and its locked pages with it: unlink here.
			return fabric.ShmReply{}, nil, i.ipcError(i.shm.Remove(req.Name, c))
		}
		return reply, files, err
	}
	var f *os.File
	switch req.Cmd {
	case fabric.ShmCreate:
		f, err = i.shm.Create(req.Name, req.Size, req.Mode, req.Pinned, c, i.freeMemory())
	case fabric.ShmOpen:
		f, err = i.shm.Open(req.Name, req.Write, c)
	case fabric.ShmRemove:
		return fabric.ShmReply{}, nil, i.ipcError(i.shm.Remove(req.Name, c))
	default:
		return nil, nil, fabric.Errorf(fabric.CodeInvalid, "oslet %d: unknown shm command %q", i.cfg.Index, req.Cmd)
	}
	if err != nil {
		return nil, nil, i.ipcError(err)
	}
	return fabric.ShmReply{}, []*os.File{f}, nil
}
