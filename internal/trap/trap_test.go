package trap

import (
	"encoding/binary"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/smpc-cluster/smpc/internal/fabric"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

func TestDirectTarget(t *testing.T) {
	s := &Supervisor{Devices: []fabric.Device{{Name: "loop0", OSlet: 2}, {Name: "ttyS0", OSlet: 1}}}
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

func TestFilter(t *testing.T) {
	if !DirectSupported {
		t.Skip("no trapped system calls on this architecture")
	}
	// seccomp_data: nr, arch, instruction pointer, six arguments. The
	// kernel loads its words in native order; x/net/bpf's VM loads in
	// network order, so the test writes them that way.
	data := func(nr int, arch uint32) []byte {
		b := make([]byte, 64)
		binary.BigEndian.PutUint32(b[0:], uint32(nr))
		binary.BigEndian.PutUint32(b[4:], arch)
		return b
	}
	const allow, notify = unix.SECCOMP_RET_ALLOW, unix.SECCOMP_RET_USER_NOTIF
	tests := []struct {
		name  string
		calls []uint32
		nr    int
		arch  uint32
		want  int
	}{
		{"opens: openat is trapped", trappedCalls, unix.SYS_OPENAT, auditArch, notify},
		{"opens: read runs", trappedCalls, unix.SYS_READ, auditArch, allow},
		{"opens: execve runs", trappedCalls, unix.SYS_EXECVE, auditArch, allow},
		{"execs: execve is trapped", execCalls, unix.SYS_EXECVE, auditArch, notify},
		{"execs: execveat is trapped", execCalls, unix.SYS_EXECVEAT, auditArch, notify},
		{"execs: openat runs", execCalls, unix.SYS_OPENAT, auditArch, allow},
		{"both: openat is trapped", append(slices.Clone(trappedCalls), execCalls...), unix.SYS_OPENAT, auditArch, notify},
		{"both: execve is trapped", append(slices.Clone(trappedCalls), execCalls...), unix.SYS_EXECVE, auditArch, notify},
		{"another architecture's call runs", execCalls, unix.SYS_EXECVE, auditArch ^ 1, allow},
	}
	for _, tt := range tests {
		vm, err := bpf.NewVM(filter(tt.calls))
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		got, err := vm.Run(data(tt.nr, tt.arch))
		if err != nil || got != tt.want {
			t.Errorf("%s: filter returned %#x, %v; want %#x", tt.name, got, err, tt.want)
		}
	}
	if _, err := filterFor(execCalls); err != nil {
		t.Errorf("assemble: %v", err)
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
