package smpc

import (
	"context"
	"fmt"
	"os"

	"github.com/smpc-cluster/smpc/internal/fabric"
)

// ShmInfo describes a named shared memory object: its size, owner, mode
// and home OSlet (0 for one a program made with shm_open, whose pages are
// charged to whoever touched each first).
type ShmInfo = fabric.ShmObject

// ShmOptions shape a shared memory object that ShmCreate makes.
type ShmOptions struct {
	On     int    // home OSlet; 0 picks one by hashing the name
	Mode   uint32 // permission bits; 0 means 0600
	Pinned bool   // lock the pages in memory at the home
}

// ShmCreate makes a named shared memory object of size bytes, its pages
// allocated by its home OSlet and charged to the home's memory; a size past
// the home's free memory is refused (ENOMEM). It returns the object open
// for reading and writing: map it MAP_SHARED. Every OSlet sees it as
// /dev/shm/NAME, so shm_open(3) in any program opens it too.
func (c *Client) ShmCreate(ctx context.Context, name string, size int64, opts ShmOptions) (*os.File, error) {
	if opts.Mode == 0 {
		opts.Mode = 0o600
	}
	return c.shmFile(ctx, fabric.ShmRequest{Cmd: fabric.ShmCreate, Name: name, Size: size, On: opts.On, Mode: opts.Mode, Pinned: opts.Pinned})
}

// ShmOpen opens a named shared memory object through its home's proxy, for
// reading, and for writing with write, where its owner and mode allow.
func (c *Client) ShmOpen(ctx context.Context, name string, write bool) (*os.File, error) {
	return c.shmFile(ctx, fabric.ShmRequest{Cmd: fabric.ShmOpen, Name: name, Write: write})
}

func (c *Client) shmFile(ctx context.Context, req fabric.ShmRequest) (*os.File, error) {
	var reply fabric.ShmReply
	files, err := c.call(ctx, 0, fabric.OpShm, req, nil, &reply)
	if err != nil {
		fabric.CloseAll(files)
		return nil, fmt.Errorf("shm %s %s: %w", req.Cmd, req.Name, err)
	}
	if len(files) != 1 {
		fabric.CloseAll(files)
		return nil, fmt.Errorf("shm %s %s: got %d descriptors, want 1", req.Cmd, req.Name, len(files))
	}
	return files[0], nil
}

// ShmList describes every named shared memory object of the cluster.
func (c *Client) ShmList(ctx context.Context) ([]ShmInfo, error) {
	var reply fabric.ShmReply
	if _, err := c.call(ctx, 0, fabric.OpShm, fabric.ShmRequest{Cmd: fabric.ShmList}, nil, &reply); err != nil {
		return nil, fmt.Errorf("shm list: %w", err)
	}
	return reply.Objects, nil
}

// ShmRemove removes a named shared memory object (its owner or root only);
// its pages go when the last process unmaps them.
func (c *Client) ShmRemove(ctx context.Context, name string) error {
	if _, err := c.call(ctx, 0, fabric.OpShm, fabric.ShmRequest{Cmd: fabric.ShmRemove, Name: name}, nil, &fabric.ShmReply{}); err != nil {
		return fmt.Errorf("shm remove %s: %w", name, err)
	}
	return nil
}
