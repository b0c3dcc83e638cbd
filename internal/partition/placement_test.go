package partition

import (
	"errors"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestExplain(t *testing.T) {
	tests := []struct {
		err  error
		want []string
	}{
		{unix.EROFS, []string{"cgroup: make /x:", "read-only", "docker run"}},
		{unix.EACCES, []string{"cgroup: make /x:", "not delegated", "Delegate=yes"}},
		{unix.EPERM, []string{"not delegated"}},
		{os.ErrNotExist, []string{"cgroup: make /x: mkdir /x: file does not exist"}},
	}
	for _, tt := range tests {
		err := explain("make /x", &os.PathError{Op: "mkdir", Path: "/x", Err: tt.err})
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("explain(%v) = %q, want it to say %q", tt.err, err, w)
			}
		}
		if !errors.Is(err, tt.err) && tt.err != unix.EROFS {
			t.Errorf("explain(%v) = %q does not wrap the cause", tt.err, err)
		}
	}
}

func TestPlacementOSlet(t *testing.T) {
	p := Placement{Kind: PlacedSystemd, Dir: "/system.slice/smpc-run-1.scope", Top: "/system.slice/smpc-run-1.scope", Unit: Unit("run-1")}
	if got := p.OSlet(3); got != "/system.slice/smpc-run-1.scope/oslet-3" {
		t.Errorf("OSlet(3) = %q", got)
	}
	if p.Unit != "smpc-run-1.scope" {
		t.Errorf("Unit = %q", p.Unit)
	}
	if delegated("/no/such/cgroup") {
		t.Error("a cgroup that does not exist is delegated")
	}
}

func TestWithinNamespace(t *testing.T) {
	for _, tt := range []struct{ path, want string }{
		{"/", "/"},
		{"/user.slice/user-0.slice/session-1.scope", "/user.slice/user-0.slice/session-1.scope"},
		{"/app.slice/smpc.service/", "/app.slice/smpc.service"},
		// Entered a container's cgroup namespace from outside it: from
		// the host's root, and from a session's scope.
		{"/..", "/"},
		{"/../user.slice/user-0.slice/session-1.scope", "/"},
		{"/../../smpc-e2e-admin", "/"},
	} {
		if got := withinNamespace(tt.path); got != tt.want {
			t.Errorf("withinNamespace(%q) = %q, want %q", tt.path, got, tt.want)
		}
	}
}
