package device

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/cgroups/v3/cgroup2"

	"github.com/smpc-cluster/smpc/internal/partition"
)

func TestAllows(t *testing.T) {
	d := Device{Mode: 0o640, UID: 10, GID: 20}
	for _, tt := range []struct {
		name string
		cred Cred
		want uint32
		ok   bool
	}{
		{"root", Cred{UID: 0, GID: 99}, read | write, true},
		{"owner reads and writes", Cred{UID: 10, GID: 99}, read | write, true},
		{"group reads", Cred{UID: 11, GID: 20}, read, true},
		{"group may not write", Cred{UID: 11, GID: 20}, read | write, false},
		{"supplementary group reads", Cred{UID: 11, GID: 99, Groups: []uint32{20}}, read, true},
		{"others may not read", Cred{UID: 11, GID: 99}, read, false},
	} {
		if got := allows(d, tt.cred, tt.want); got != tt.ok {
			t.Errorf("%s: allows = %v, want %v", tt.name, got, tt.ok)
		}
	}
}

func TestCgroupRules(t *testing.T) {
	devs := []Device{
		{Name: "loop7", OSlet: 2, Type: "block", Major: 7, Minor: 7},
		{Name: "vda", OSlet: 1, Type: "block", Major: 254, Minor: 0},
	}
	rules := CgroupRules(2, devs)
	if r := rules[0]; r.Allow || r.Access != "rwm" || r.Type != "a" || *r.Major != -1 || *r.Minor != -1 {
		t.Fatalf("the first rule must deny everything: %+v", r)
	}
	find := func(typ string, major, minor int64) string {
		for _, r := range rules[1:] {
			if r.Allow && r.Type == typ && *r.Major == major && *r.Minor == minor {
				return r.Access
			}
		}
		return ""
	}
	for _, tt := range []struct {
		what         string
		typ          string
		major, minor int64
		access       string
	}{
		{"its own device", "b", 7, 7, "rwm"},
		{"another OSlet's device", "b", 254, 0, ""},
		{"/dev/null", "c", 1, 3, "rwm"},
		{"pseudo-terminals", "c", 136, -1, "rw"},
		{"/dev/fuse, without mknod", "c", 10, 229, "rw"},
	} {
		if got := find(tt.typ, tt.major, tt.minor); got != tt.access {
			t.Errorf("%s: access %q, want %q", tt.what, got, tt.access)
		}
	}
}

func TestLookupRefusesPaths(t *testing.T) {
	for _, name := range []string{"", "..", "pts/0", "../etc/passwd"} {
		if _, err := Lookup(name); err == nil {
			t.Errorf("Lookup(%q) succeeded", name)
		}
	}
	if d, err := Lookup("null"); err != nil || d.Type != "char" || d.Major != 1 || d.Minor != 3 {
		t.Errorf("Lookup(null) = %+v, %v", d, err)
	}
}

// TestCgroupRulesV2 applies an OSlet's rules as a cgroup v2 devices program
// (what containerd's cgroups library makes of them on a unified host) to a
// cgroup of the v2 hierarchy, which a hybrid host mounts too, and opens
// devices from a process in it: the kernel runs the program on every open.
func TestCgroupRulesV2(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("making cgroups and loading their device programs needs root")
	}
	root, err := partition.Cgroup2Root()
	if err != nil {
		t.Skip(err)
	}
	// kmsg stands for a device of OSlet 2's: any root may open it.
	kmsg, err := Lookup("kmsg")
	if err != nil {
		t.Skip(err)
	}
	kmsg.OSlet = 2
	devs := []Device{kmsg}
	open := func(k int, path string) error {
		group := fmt.Sprintf("/smpc-devtest-%d-%d", os.Getpid(), k)
		// Gone even if the manager fails after making the directory.
		defer os.Remove(filepath.Join(root, group))
		m, err := cgroup2.NewManager(root, group, &cgroup2.Resources{Devices: CgroupRules(k, devs)})
		if err != nil {
			t.Fatalf("cgroup %s with oslet %d's device rules: %v", group, k, err)
		}
		defer m.Delete()
		dir, err := os.Open(filepath.Join(root, group))
		if err != nil {
			t.Fatal(err)
		}
		defer dir.Close()
		cmd := exec.Command("sh", "-c", "exec 3<"+path)
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd())}
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}
	for _, tt := range []struct {
		oslet int
		path  string
		ok    bool
	}{
		{1, "/dev/null", true},
		{1, "/dev/urandom", true},
		{1, "/dev/kmsg", false}, // another OSlet's
		{2, "/dev/kmsg", true},  // its own
	} {
		err := open(tt.oslet, tt.path)
		if (err == nil) != tt.ok {
			t.Errorf("oslet %d opens %s: %v, want allowed=%v", tt.oslet, tt.path, err, tt.ok)
		}
		if !tt.ok && err != nil && !strings.Contains(err.Error(), "not permitted") {
			t.Errorf("oslet %d opens %s: %v, want EPERM", tt.oslet, tt.path, err)
		}
	}
}
