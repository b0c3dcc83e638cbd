package partition

import (
	"os"
	"path/filepath"
	"slices"
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
