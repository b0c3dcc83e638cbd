package device

import (
	"os"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestDirectTarget(t *testing.T) {
	s := &Supervisor{Devices: []Device{{Name: "loop0", OSlet: 2}, {Name: "ttyS0", OSlet: 1}}}
	for _, tt := range []struct {
		path  string
		flags int
		k     int
		name  string
	}{
		{"/rdev/2/loop0", unix.O_RDONLY, 2, "loop0"},
		{"/rdev/2/loop0", unix.O_RDWR | unix.O_EXCL | unix.O_CLOEXEC, 2, "loop0"},
		{"/rdev//2/./loop0", unix.O_RDONLY, 2, "loop0"},
		{"/rdev/1/../1/ttyS0", unix.O_WRONLY, 1, "ttyS0"},
		{"/rdev/1/loop0", unix.O_RDONLY, 0, ""},   // another OSlet's name
		{"/rdev/3/loop0", unix.O_RDONLY, 0, ""},   // no such OSlet
		{"/rdev/2", unix.O_RDONLY, 0, ""},         // a directory
		{"/rdev/2/loop0/x", unix.O_RDONLY, 0, ""}, // below a device
		{"/rdev/x/loop0", unix.O_RDONLY, 0, ""},
		{"/rdevx/2/loop0", unix.O_RDONLY, 0, ""},
		{"/dev/loop0", unix.O_RDONLY, 0, ""},
		{"/rdev/2/loop0", unix.O_RDONLY | unix.O_DIRECTORY, 0, ""},
		{"/rdev/2/loop0", unix.O_WRONLY | unix.O_CREAT, 0, ""},
		{"/rdev/2/loop0", unix.O_PATH, 0, ""},
		{"", unix.O_RDONLY, 0, ""},
		// Relative to this test's directory, which is not under /rdev.
		{"2/loop0", unix.O_RDONLY, 0, ""},
	} {
		k, name, ok := s.target(os.Getpid(), unix.AT_FDCWD, tt.path, tt.flags)
		if ok != (tt.k != 0) || k != tt.k || name != tt.name {
			t.Errorf("target(%q, %#x) = %d %q %v, want %d %q", tt.path, tt.flags, k, name, ok, tt.k, tt.name)
		}
	}
}

func TestReadString(t *testing.T) {
	// Strings that end just before, on and after a page boundary, read
	// from this process's own memory as the supervisor reads a caller's.
	// On the heap (a size not known when compiling): a stack may move.
	page := make([]byte, 3*os.Getpagesize())
	base := uintptr(unsafe.Pointer(&page[0]))
	start := int(4096-base%4096) + 4096 // a page boundary inside page
	for _, tt := range []struct {
		name   string
		offset int
		length int
	}{
		{"short", 100, 10},
		{"ends at a page boundary", start - 11, 10},
		{"crosses a page boundary", start - 5, 20},
		{"the longest path", start - 4096, unix.PathMax - 1},
	} {
		want := strings.Repeat("p", tt.length)
		copy(page[tt.offset:], want)
		page[tt.offset+tt.length] = 0
		got, err := readString(os.Getpid(), uint64(base)+uint64(tt.offset), make([]byte, pageSize))
		if err != nil || got != want {
			t.Errorf("%s: readString = %d bytes, %v; want %d bytes", tt.name, len(got), err, len(want))
		}
	}
	if _, err := readString(os.Getpid(), 8, make([]byte, pageSize)); err == nil {
		t.Error("readString of an unmapped address did not fail")
	}
}

func TestCredOf(t *testing.T) {
	c, err := credOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if c.UID != uint32(os.Getuid()) || c.GID != uint32(os.Getgid()) {
		t.Errorf("credOf(self) = %+v, want uid %d gid %d", c, os.Getuid(), os.Getgid())
	}
	if _, err := credOf(-1); err == nil {
		t.Error("credOf(-1) did not fail")
	}
}

func TestOpenFilter(t *testing.T) {
	if !DirectSupported {
		t.Skip("no direct device opens on this architecture")
	}
	prog, err := openFilter()
	if err != nil {
		t.Fatal(err)
	}
	// arch check, load nr, one jump a call, allow, notify
	if want := 3 + len(trappedCalls) + 2; len(prog) != want {
		t.Fatalf("filter has %d instructions, want %d", len(prog), want)
	}
	if last := prog[len(prog)-1]; last.K != unix.SECCOMP_RET_USER_NOTIF {
		t.Errorf("the filter's last instruction returns %#x, not SECCOMP_RET_USER_NOTIF", last.K)
	}
}

func TestReceiveListener(t *testing.T) {
	for _, tt := range []struct {
		name  string
		stage func(child *os.File)
		want  string // error text; "" for a descriptor
	}{
		{"handed over", func(child *os.File) {
			r, w, _ := os.Pipe()
			defer r.Close()
			defer w.Close()
			unix.Sendmsg(int(child.Fd()), []byte{0}, unix.UnixRights(int(r.Fd())), nil, 0)
		}, ""},
		{"the stage's own error", func(child *os.File) {
			child.Write([]byte("install seccomp filter: invalid argument"))
		}, "install seccomp filter: invalid argument"},
		{"the stage died", func(child *os.File) {}, "exited before"},
	} {
		parent, child, err := ListenerPair()
		if err != nil {
			t.Fatal(err)
		}
		tt.stage(child)
		child.Close()
		f, err := ReceiveListener(parent, time.Second)
		parent.Close()
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case tt.want == "":
			f.Close()
		case err == nil || !strings.Contains(err.Error(), tt.want):
			t.Errorf("%s: got %v, want an error with %q", tt.name, err, tt.want)
		}
	}
}
