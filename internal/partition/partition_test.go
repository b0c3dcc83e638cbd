package partition

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// An OSlet's processes come from both leaves' lists; on v1 the init is in
// both (its spawning thread sits in the processes' leaf) and comes once.
func TestPIDsOfBothLeaves(t *testing.T) {
	dir := t.TempDir()
	initProcs, procs := filepath.Join(dir, "init.procs"), filepath.Join(dir, "procs.procs")
	os.WriteFile(initProcs, []byte("7\n"), 0o644)
	os.WriteFile(procs, []byte("7\n40\n41\n"), 0o644)
	s := StatFiles{Procs: []string{initProcs, procs}}
	if got := s.PIDs(); !slices.Equal(got, []int{7, 40, 41}) {
		t.Errorf("PIDs = %v, want [7 40 41]", got)
	}
	// A leaf that is gone (an OSlet torn down) lists nothing.
	os.Remove(procs)
	if got := s.PIDs(); !slices.Equal(got, []int{7}) {
		t.Errorf("PIDs without the processes' leaf = %v, want [7]", got)
	}
}

// A Placer writes the PID into every placement file, and names the file
// that it could not open or write.
func TestPlacer(t *testing.T) {
	dir := t.TempDir()
	files := []string{filepath.Join(dir, "cpuset.procs"), filepath.Join(dir, "memory.procs")}
	for _, f := range files {
		os.WriteFile(f, nil, 0o644)
	}
	p, err := StatFiles{PlaceProcs: files}.OpenPlacer()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Place(4242); err != nil {
		t.Fatal(err)
	}
	p.Close()
	for _, f := range files {
		if b, _ := os.ReadFile(f); string(b) != "4242" {
			t.Errorf("%s holds %q, want 4242", f, b)
		}
	}
	missing := filepath.Join(dir, "gone", "cgroup.procs")
	if _, err := (StatFiles{PlaceProcs: append(files, missing)}).OpenPlacer(); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("OpenPlacer with %s missing: %v, want an error naming it", missing, err)
	}
	// A file that takes no writes (a cgroup torn down answers ENODEV).
	ro, err := StatFiles{PlaceProcs: []string{"/dev/full"}}.OpenPlacer()
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if err := ro.Place(7); err == nil || !strings.Contains(err.Error(), "move pid 7 into /dev") {
		t.Errorf("Place into /dev/full: %v, want the move named", err)
	}
}
