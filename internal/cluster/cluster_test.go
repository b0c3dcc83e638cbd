package cluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smpc-cluster/smpc/internal/network"
	"github.com/smpc-cluster/smpc/internal/statedir"
)

// The firmware's record keeps its network beside the part every reader
// takes; the command line's reader skips it.
func TestStateRoundTrip(t *testing.T) {
	dir := t.TempDir()
	s := &State{Record: statedir.Record{Name: "vm", StateDir: dir, Inits: map[int]int{1: 10, 2: 11}, Reaper: 9},
		Network: &network.Record{Subnet: "10.9.0.0/24", Bridge: "smpcx"}}
	if err := s.write(); err != nil {
		t.Fatal(err)
	}
	got, err := ReadState(dir)
	if err != nil || got.Name != "vm" || got.Inits[2] != 11 || got.Network == nil || got.Network.Bridge != "smpcx" {
		t.Fatalf("ReadState = %+v (network %+v), %v", got, got.Network, err)
	}
	r, err := statedir.ReadRecord(dir)
	if err != nil || r.Reaper != 9 {
		t.Fatalf("the command line's read = %+v, %v", r, err)
	}
}

// Every OSlet finds smpc on its PATH: a link to it where the OSlets see its
// path, a copy where they do not (under /tmp, which each has its own of).
func TestInstallCommand(t *testing.T) {
	stateDir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		exe  string
		link bool
	}{
		{"/usr/bin/true", true},
		{self, !strings.HasPrefix(self, "/tmp/")},
	} {
		dir, err := installCommand(stateDir, tt.exe)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Lstat(filepath.Join(dir, "smpc"))
		if err != nil {
			t.Fatal(err)
		}
		if isLink := fi.Mode()&os.ModeSymlink != 0; isLink != tt.link {
			t.Errorf("install %s: a link %v, want %v", tt.exe, isLink, tt.link)
		}
	}
}

// A cluster's names on the host (cgroups, links) come from its state dir:
// the same for the same dir, different for another, safe as a name.
func TestClusterID(t *testing.T) {
	a, b := clusterID("/run/smpc"), clusterID("/run/smpc-other")
	if a != clusterID("/run/smpc") || a == b {
		t.Errorf("clusterID: %q, %q", a, b)
	}
	if id := clusterID("/run/a b/c;d"); strings.ContainsAny(id, " ;/") {
		t.Errorf("clusterID of an odd dir = %q", id)
	}
}

func TestCommandOf(t *testing.T) {
	if got := commandOf(os.Getpid()); !strings.Contains(got, filepath.Base(os.Args[0])) {
		t.Errorf("commandOf(self) = %q", got)
	}
	if got := commandOf(-1); got != "?" {
		t.Errorf("commandOf(-1) = %q", got)
	}
}
