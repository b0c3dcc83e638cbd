package shm

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestOpenChecksModeBits checks that Open hands out a descriptor only where
// the file's owner and mode bits allow, as open(2) would.
func TestOpenChecksModeBits(t *testing.T) {
	dir := t.TempDir()
	owner := uint32(os.Getuid())
	for name, mode := range map[string]os.FileMode{"private": 0o600, "readable": 0o644} {
		if err := os.WriteFile(filepath.Join(dir, name), make([]byte, 4096), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(filepath.Join(dir, name), mode)
	}
	other := Cred{UID: owner + 1000, GID: 65534}
	if owner == 0 {
		other.UID = 65534
	}
	table := NewTable(1, dir)
	for _, tt := range []struct {
		name  string
		write bool
		cred  Cred
		want  error
	}{
		{"private", true, Cred{UID: owner}, nil},
		{"private", false, other, syscall.EACCES},
		{"readable", false, other, nil},
		{"readable", true, other, syscall.EACCES},
		{"missing", false, Cred{UID: owner}, os.ErrNotExist},
		{"../escape", false, Cred{UID: owner}, syscall.EINVAL},
	} {
		f, err := table.Open(tt.name, tt.write, tt.cred)
		if f != nil {
			f.Close()
		}
		if (tt.want == nil) != (err == nil) || (tt.want != nil && !errors.Is(err, tt.want)) {
			t.Errorf("open %s (write %v) as uid %d: %v, want %v", tt.name, tt.write, tt.cred.UID, err, tt.want)
		}
	}
}
