package oslet

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestPickLeastLoaded(t *testing.T) {
	// No cgroups to count: only the launches placed since the count weigh.
	b := newLoadBoard(nil, map[int]int{1: 1, 2: 2, 3: 1})
	b.countLocked(0)
	b.fresh = 1 << 62 // keep this (empty) count for the whole test
	tests := []struct {
		candidates []int
		stay       int
		want       int
	}{
		{[]int{1, 2, 3}, 0, 1}, // all idle: the lowest index
		{[]int{1, 2, 3}, 3, 3}, // a tie keeps the process where it is
		{[]int{1, 2, 3}, 0, 2}, // 1 and 3 have one launch each, 2 has none
		{[]int{1, 2, 3}, 0, 2}, // 2 has two CPUs: one launch there weighs 0.5
		{[]int{1, 3}, 1, 1},    // 1 and 3 tie at one launch: stay on 1
	}
	for n, tt := range tests {
		if got := b.pick(tt.candidates, tt.stay, 0); got != tt.want {
			t.Errorf("pick %d: %v staying on %d chose %d, want %d (placed %v)", n, tt.candidates, tt.stay, got, tt.want, b.placed)
		}
	}
}

func TestWithSmpcOnPath(t *testing.T) {
	tests := []struct {
		env  []string
		want string
	}{
		{[]string{"PATH=/usr/bin:/bin"}, "PATH=/usr/bin:/bin:/run/smpc/bin"},
		{[]string{"PATH=/run/smpc/bin:/bin"}, "PATH=/run/smpc/bin:/bin"},
		{[]string{"HOME=/root"}, "PATH=" + defaultPath + ":/run/smpc/bin"},
		{[]string{"PATH="}, "PATH=/run/smpc/bin"},
	}
	for _, tt := range tests {
		got := withSmpcOnPath(tt.env, "/run/smpc/bin")
		if !slices.Contains(got, tt.want) {
			t.Errorf("withSmpcOnPath(%q) = %q, want it to hold %q", tt.env, got, tt.want)
		}
	}
}

func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "tool")
	os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(filepath.Join(dir, "data"), nil, 0o644)
	env := []string{"PATH=/nonexistent:" + dir}
	if p, err := lookPath("tool", env, "/"); err != nil || p != exe {
		t.Errorf("tool on PATH: %q, %v", p, err)
	}
	if p, err := lookPath("./tool", nil, dir); err != nil || p != exe {
		t.Errorf("./tool relative to the working directory: %q, %v", p, err)
	}
	if _, err := lookPath("./data", nil, dir); err == nil {
		t.Error("a file that is not executable was found")
	}
	if _, err := lookPath("nosuchtool", env, "/"); err == nil {
		t.Error("a missing program was found")
	}
}
