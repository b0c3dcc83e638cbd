package oslet

import (
	"errors"
	"fmt"
	"os"

	"github.com/smpc-cluster/smpc/internal/fabric"
	"github.com/smpc-cluster/smpc/internal/shm"
)

// shmError names this OSlet in an error of the shared memory table; the
// reply keeps the errno it wraps (fabric.AsError).
func (i *Init) shmError(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("oslet %d: %w", i.cfg.Index, err)
}

// freeMemory is what the OSlet's memory limit leaves: shared memory homed
// here is charged to this OSlet, so a create that does not fit is refused.
func (i *Init) freeMemory() int64 { return i.self.Memory - i.cg.MemoryUsed() }

// shmServe serves named shared memory: create at the home, open and remove
// at the object's recorded home, list anywhere (every OSlet sees the same
// /dev/shm).
func (i *Init) shmServe(who *caller, req *fabric.ShmRequest) (any, []*os.File, error) {
	cred, err := credOf(who, req.Cred)
	if err != nil {
		return nil, nil, err
	}
	c := cred
	if req.Cmd == fabric.ShmList {
		list, err := i.shm.List()
		return fabric.ShmReply{Objects: list}, nil, i.shmError(err)
	}
	if err := shm.CheckName(req.Name); err != nil {
		return nil, nil, i.shmError(err)
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
		reply, files, err := forwardAs[fabric.ShmReply](who.ctx, p, fabric.OpShm, req, cred, nil)
		if errors.Is(err, fabric.ErrDown) && req.Cmd == fabric.ShmRemove {
			// The home died and its locked pages with it: unlink here.
			return fabric.ShmReply{}, nil, i.shmError(i.shm.Remove(req.Name, c))
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
		return fabric.ShmReply{}, nil, i.shmError(i.shm.Remove(req.Name, c))
	default:
		return nil, nil, fabric.Errorf(fabric.CodeInvalid, "oslet %d: unknown shm command %q", i.cfg.Index, req.Cmd)
	}
	if err != nil {
		return nil, nil, i.shmError(err)
	}
	return fabric.ShmReply{}, []*os.File{f}, nil
}
