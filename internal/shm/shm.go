// Package shm is the cluster's named shared memory: the seed's "memory
// filesystem for shmget", on Linux a tmpfs that every OSlet mounts as
// /dev/shm, so that shm_open(3) and a MAP_SHARED mapping name the same pages
// from every OSlet.
//
// An object made with 'smpc shm create' has a home OSlet. The home's init
// creates the file and allocates its pages itself, so that the kernel
// charges them to the home's memory cgroup (tmpfs pages go to whoever first
// allocates them); with Pinned it also maps and locks them (the seed's mlock
// in the proxy). The home is recorded on the file as an extended attribute,
// so that any OSlet can route a request to it. Objects that programs make
// with shm_open have no recorded home: their pages are charged to the OSlet
// of the process that first touched each one.
package shm

import (
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	units "github.com/docker/go-units"
	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc/internal/fabric"
	"github.com/smpc-cluster/smpc/internal/vproc"
)

// Dir is where every OSlet sees the cluster's shared memory.
const Dir = "/dev/shm"

// Extended attributes on an object's file. trusted.* works on every tmpfs
// and only root (the inits) may set it.
const (
	xattrHome   = "trusted.smpc.home"
	xattrPinned = "trusted.smpc.pinned"
)

// Info describes one object, as 'smpc shm ls' shows it.
type Info = fabric.ShmObject

// Cred is who asks: the kernel's word, taken by the first init.
type Cred = vproc.Cred

// CheckName refuses names that are not one file name, as shm_open(3) does.
func CheckName(name string) error {
	n := strings.TrimPrefix(name, "/")
	if n == "" || n == "." || n == ".." || strings.Contains(n, "/") || len(n) > 255 {
		return fmt.Errorf("shm name %q: one file name (such as /buffer or buffer): %w", name, syscall.EINVAL)
	}
	return nil
}

func clean(name string) string { return strings.TrimPrefix(name, "/") }

// HomeOfName chooses the home of a name when the user does not: stripe by
// hash, as for IPC keys.
func HomeOfName(name string, oslets []int) int {
	h := fnv.New32a()
	h.Write([]byte(clean(name)))
	return oslets[h.Sum32()%uint32(len(oslets))]
}

// Table is one init's part in shared memory: the objects it is home to
// and keeps locked in memory.
type Table struct {
	home int
	dir  string

	mu     sync.Mutex
	pinned map[string][]byte // name → locked mapping
}

// NewTable makes the table of OSlet home, whose shared memory is under dir.
func NewTable(home int, dir string) *Table {
	return &Table{home: home, dir: dir, pinned: map[string][]byte{}}
}

func (t *Table) path(name string) string { return filepath.Join(t.dir, clean(name)) }

// Create makes an object at this home: the file, owned by the caller with
// mode, size bytes allocated here (and locked with pinned). free is the
// memory the home has left; a size past it is refused.
func (t *Table) Create(name string, size int64, mode uint32, pinned bool, c Cred, free int64) (*os.File, error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	if size <= 0 {
		return nil, fmt.Errorf("shm %s: size %d: %w", clean(name), size, syscall.EINVAL)
	}
	if size > free {
		return nil, fmt.Errorf("shm %s: %s is more than the %s oslet %d has free: %w", clean(name), units.BytesSize(float64(size)), units.BytesSize(float64(max(free, 0))), t.home, syscall.ENOMEM)
	}
	f, err := os.OpenFile(t.path(name), os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, os.FileMode(mode&0o777))
	if err != nil {
		return nil, fmt.Errorf("shm %s: %w", clean(name), err)
	}
	fail := func(err error) (*os.File, error) {
		f.Close()
		os.Remove(t.path(name))
		return nil, fmt.Errorf("shm %s: %w", clean(name), err)
	}
	if err := f.Chown(int(c.UID), int(c.GID)); err != nil {
		return fail(err)
	}
	if err := f.Chmod(os.FileMode(mode & 0o777)); err != nil {
		return fail(err)
	}
	// Allocating the pages here charges them to the home's cgroup; a tmpfs
	// that cannot hold them fails now rather than with SIGBUS later.
	if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
		return fail(fmt.Errorf("allocate %d bytes: %w", size, err))
	}
	if err := unix.Fsetxattr(int(f.Fd()), xattrHome, []byte(strconv.Itoa(t.home)), 0); err != nil {
		return fail(fmt.Errorf("record home: %w", err))
	}
	if pinned {
		mem, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			return fail(fmt.Errorf("map to lock: %w", err))
		}
		if err := unix.Mlock(mem); err != nil {
			unix.Munmap(mem)
			return fail(fmt.Errorf("lock %d bytes in memory: %w", size, err))
		}
		unix.Fsetxattr(int(f.Fd()), xattrPinned, []byte("1"), 0)
		t.mu.Lock()
		t.pinned[clean(name)] = mem
		t.mu.Unlock()
	}
	return f, nil
}

// Open opens an object for a caller, if its owner and mode bits allow
// (read, and write when write is set), and returns the descriptor to hand
// over. The bits are checked on the file opened, not on the name.
func (t *Table) Open(name string, write bool, c Cred) (*os.File, error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	flag, want := os.O_RDONLY, uint32(4)
	if write {
		flag, want = os.O_RDWR, 6
	}
	f, err := os.OpenFile(t.path(name), flag|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("shm %s: %w", clean(name), err)
	}
	var st unix.Stat_t
	err = unix.Fstat(int(f.Fd()), &st)
	switch {
	case err != nil:
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		err = fmt.Errorf("not a shared memory object: %w", syscall.EINVAL)
	case !c.Allows(st.Uid, st.Gid, st.Mode, want):
		err = syscall.EACCES
	default:
		return f, nil
	}
	f.Close()
	return nil, fmt.Errorf("shm %s: %w", clean(name), err)
}

// allows applies a file's owner and mode bits, as open(2) would.
// Remove unlinks an object and lets go of its locked pages. Only its owner
// or root may remove it (the sticky /dev/shm's rule). The pages go when the
// last process unmaps them.
func (t *Table) Remove(name string, c Cred) error {
	if err := CheckName(name); err != nil {
		return err
	}
	info, err := t.Stat(name)
	if err != nil {
		return err
	}
	if c.UID != 0 && c.UID != info.UID {
		return fmt.Errorf("shm %s: %w", clean(name), syscall.EPERM)
	}
	if err := os.Remove(t.path(name)); err != nil {
		return fmt.Errorf("shm %s: %w", clean(name), err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if mem, ok := t.pinned[clean(name)]; ok {
		unix.Munmap(mem)
		delete(t.pinned, clean(name))
	}
	return nil
}

// Stat describes one object.
func (t *Table) Stat(name string) (Info, error) {
	var st unix.Stat_t
	if err := unix.Lstat(t.path(name), &st); err != nil {
		return Info{}, fmt.Errorf("shm %s: %w", clean(name), err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return Info{}, fmt.Errorf("shm %s: not a shared memory object: %w", clean(name), syscall.EINVAL)
	}
	i := Info{Name: clean(name), Size: st.Size, UID: st.Uid, GID: st.Gid, Mode: st.Mode & 0o7777}
	buf := make([]byte, 16)
	if n, err := unix.Lgetxattr(t.path(name), xattrHome, buf); err == nil {
		i.Home, _ = strconv.Atoi(string(buf[:n]))
	}
	if _, err := unix.Lgetxattr(t.path(name), xattrPinned, buf); err == nil {
		i.Pinned = true
	}
	return i, nil
}

// HomeOf returns the recorded home of an existing object, or 0.
func (t *Table) HomeOf(name string) int {
	i, err := t.Stat(name)
	if err != nil {
		return 0
	}
	return i.Home
}

// List describes every object in the cluster's shared memory.
func (t *Table) List() ([]Info, error) {
	entries, err := os.ReadDir(t.dir)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", t.dir, err)
	}
	var out []Info
	for _, e := range entries {
		if i, err := t.Stat(e.Name()); err == nil {
			out = append(out, i)
		} else if !errors.Is(err, syscall.EINVAL) && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	return out, nil
}
