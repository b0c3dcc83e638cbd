package statedir

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smpc-cluster/smpc/internal/plan"
)

func TestResolve(t *testing.T) {
	t.Setenv(Env, "")
	for _, tt := range []struct {
		flag, env, want, err string
	}{
		{want: Default},
		{env: "/run/other", want: "/run/other"},
		{flag: "/run/flag", env: "/run/other", want: "/run/flag"},
		{flag: "/tmp/x", err: "/tmp is private to each OSlet"},
		{flag: "/gtmp", err: "/gtmp is private"},
		{flag: "/proc/1", err: "/proc is private"},
		{flag: "/tmpfoo", want: "/tmpfoo"},
	} {
		t.Setenv(Env, tt.env)
		got, err := Resolve(tt.flag)
		switch {
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("Resolve(%q) with $%s=%q: %v, want an error with %q", tt.flag, Env, tt.env, err, tt.err)
		case tt.err == "" && (err != nil || got != tt.want):
			t.Errorf("Resolve(%q) with $%s=%q = %q, %v; want %q", tt.flag, Env, tt.env, got, err, tt.want)
		}
	}
}

// The firmware's record embeds Record and adds fields; the command line
// reads its part, and the part it needs to find OSlets.
func TestRecordRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if _, err := ReadRecord(dir); !errors.Is(err, ErrNoCluster) {
		t.Fatalf("no record: %v, want ErrNoCluster", err)
	}
	type firmware struct {
		Record
		Network string `json:"network"`
	}
	p := &plan.Plan{Version: plan.Version, OSlets: []plan.OSlet{{Index: 1}, {Index: 3}}}
	if err := Write(dir, firmware{Record: Record{Name: "vm", StateDir: dir, Plan: p, Reaper: 42}, Network: "x"}); err != nil {
		t.Fatal(err)
	}
	r, err := ReadRecord(dir)
	if err != nil || r.Name != "vm" || r.Reaper != 42 || len(r.Plan.OSlets) != 2 {
		t.Fatalf("ReadRecord = %+v, %v", r, err)
	}
	var m Members
	if err := Read(dir, &m); err != nil || m.Reaper != 42 || len(m.Indexes()) != 2 || m.Indexes()[1] != 3 {
		t.Fatalf("Members = %+v, %v", m, err)
	}
	if _, err := os.Stat(filepath.Join(dir, RecordFile+".new")); err == nil {
		t.Error("Write left its temporary file")
	}
	os.WriteFile(filepath.Join(dir, RecordFile), []byte("{"), 0o644)
	if _, err := ReadRecord(dir); err == nil || errors.Is(err, ErrNoCluster) {
		t.Errorf("a torn record: %v, want a decode error", err)
	}
}

func TestReadPorts(t *testing.T) {
	dir := t.TempDir()
	if _, err := ReadPorts(dir); err == nil {
		t.Error("no port map: no error")
	}
	os.WriteFile(filepath.Join(dir, PortsFile), []byte(`[{"proto":"tcp","port":80,"oslet":2,"holder":1}]`), 0o644)
	ports, err := ReadPorts(dir)
	if err != nil || len(ports) != 1 || !ports[0].Conflict() {
		t.Errorf("ReadPorts = %+v, %v; want one conflicting port", ports, err)
	}
}
