package device

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/smpc-cluster/smpc/internal/fabric"
	"github.com/smpc-cluster/smpc/internal/vproc"
	"golang.org/x/sys/unix"
)

// Opener opens OSlet k's device name for a process with its credentials
// and its open(2) flags: it asks k, which checks them and hands the open
// descriptor over.
type Opener func(ctx context.Context, k int, name string, flags int, cred Cred) (*os.File, error)

// Serve mounts /rdev in this mount namespace as a filesystem of this
// process: Dir/K/NAME for every device of devs. An open goes to open, and
// reads and writes then go to the descriptor the owner handed over.
//
// A device node cannot do this: the kernel sends no fanotify permission
// event for opens of device nodes, and a FUSE file cannot be passed through
// to a block device (passthrough takes regular files only), so the data
// crosses this process, by splice where the kernel allows.
func Serve(devs []Device, open Opener) (*fuse.Server, error) {
	if err := os.MkdirAll(Dir, 0o755); err != nil {
		return nil, err
	}
	root := &rdevRoot{devs: devs, open: open}
	srv, err := fs.Mount(Dir, root, &fs.Options{
		MountOptions: fuse.MountOptions{
			AllowOther: true, DirectMount: true, DirectMountStrict: true,
			FsName: "smpc-rdev", Name: "rdev",
			// 512 KiB requests: go-fuse splices a read's reply through a
			// pipe of the reply's size and a page more, and a pipe may not
			// exceed fs.pipe-max-size (1 MiB by default); with 1 MiB
			// requests every read fell back to a copy through a buffer.
			MaxWrite: 512 << 10, MaxReadAhead: 512 << 10,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", Dir, err)
	}
	return srv, nil
}

type rdevRoot struct {
	fs.Inode
	devs []Device
	open Opener
}

func (r *rdevRoot) OnAdd(ctx context.Context) {
	dirs := map[int]*fs.Inode{}
	for _, d := range r.devs {
		dir, ok := dirs[d.OSlet]
		if !ok {
			dir = r.NewPersistentInode(ctx, &fs.Inode{}, fs.StableAttr{Mode: syscall.S_IFDIR})
			r.AddChild(strconv.Itoa(d.OSlet), dir, false)
			dirs[d.OSlet] = dir
		}
		dir.AddChild(d.Name, r.NewPersistentInode(ctx, &rdevFile{dev: d, open: r.open}, fs.StableAttr{Mode: syscall.S_IFREG}), false)
	}
}

// rdevFile is one device, seen as a file of the device's size.
type rdevFile struct {
	fs.Inode
	dev  Device
	open Opener
}

var _ = (fs.NodeOpener)((*rdevFile)(nil))
var _ = (fs.NodeGetattrer)((*rdevFile)(nil))

func (f *rdevFile) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | f.dev.Mode&0o777
	out.Uid, out.Gid = f.dev.UID, f.dev.GID
	out.Size = uint64(f.dev.Size)
	// A block device can change size (losetup -c, a resized disk): sysfs
	// says what it is now, with no open of the device.
	if f.dev.Type == "block" {
		if size := blockSize(f.dev.Name); size > 0 {
			out.Size = uint64(size)
		}
	}
	return 0
}

func (f *rdevFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	caller, ok := fuse.FromContext(ctx)
	if !ok {
		return nil, 0, syscall.EIO
	}
	// The kernel gives the caller's file-system IDs, not its groups.
	cred := Cred{UID: caller.Uid, GID: caller.Gid}
	if c, err := vproc.FileCredOf(int(caller.Pid)); err == nil {
		cred.Groups = c.Groups
	}
	file, err := f.open(ctx, f.dev.OSlet, f.dev.Name, int(flags), cred)
	if err != nil {
		return nil, 0, fabric.ErrnoOf(err)
	}
	// Direct I/O: every read and write reaches the owner's device; the
	// device's own page cache is the only cache, as for a local open.
	return &rdevHandle{f: file}, fuse.FOPEN_DIRECT_IO, 0
}

// rdevHandle is an open device: the descriptor its owner handed over.
type rdevHandle struct{ f *os.File }

var _ = (fs.FileReader)((*rdevHandle)(nil))
var _ = (fs.FileWriter)((*rdevHandle)(nil))
var _ = (fs.FileReleaser)((*rdevHandle)(nil))
var _ = (fs.FileFsyncer)((*rdevHandle)(nil))

func (h *rdevHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return fuse.ReadResultFd(h.f.Fd(), off, len(dest)), 0
}

func (h *rdevHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	n, err := unix.Pwrite(int(h.f.Fd()), data, off)
	if err != nil {
		return uint32(max(n, 0)), fs.ToErrno(err)
	}
	return uint32(n), 0
}

func (h *rdevHandle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	return fs.ToErrno(h.f.Sync())
}

func (h *rdevHandle) Release(ctx context.Context) syscall.Errno {
	return fs.ToErrno(h.f.Close())
}
