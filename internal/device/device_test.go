package device

import (
	"testing"
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
	if r := rules[0]; r.Allow || r.Access != "rwm" || r.Type != "" {
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
