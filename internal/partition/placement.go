package partition

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/cgroups/v3/cgroup2"
	systemd "github.com/coreos/go-systemd/v22/dbus"
	godbus "github.com/godbus/dbus/v5"
	"golang.org/x/sys/unix"
)

// Where a cluster's cgroups live. They are never nested under the cgroup
// of whoever ran smpc boot: on cgroup v2 a login session's scope or a
// service's cgroup holds processes, and the kernel enables no controller
// below a cgroup that does (the "no internal processes" rule), so the OSlets
// would get no cpuset, memory or pids limits there. The host's manager of
// cgroups decides instead, as runc's and containerd's cgroup drivers let it:
//
//   - Delegated: on cgroup v2, when smpc boot runs in a cgroup that was
//     delegated to it (a systemd service with Delegate=yes, which systemd
//     marks with the trusted.delegate attribute, or the root of a
//     container's cgroup namespace), the cluster is that cgroup's own: the
//     processes in it move into a leaf "supervisor" (as docker-in-docker's
//     entry point moves a container's) and the OSlets go beside it, so
//     that the service, or the container, is the cluster.
//   - Systemd: on a cgroup v2 host that systemd runs, a transient scope
//     "smpc-ID.scope" with Delegate=yes, made over D-Bus, holds the
//     cluster's PID 1 (in a leaf "reaper") and the OSlets. systemd then
//     knows the cluster as a unit of its own and leaves its subtree alone.
//   - Top: otherwise (no systemd, or cgroup v1, where systemd manages
//     no cpuset and there is no rule about internal processes) a top-level
//     "smpc" cgroup of every hierarchy's root holds one cgroup per cluster.
const (
	PlacedDelegated = "delegated"
	PlacedSystemd   = "systemd"
	PlacedTop       = "top"
)

// Placement is where a cluster's cgroups are, recorded at boot so that any
// later process (shutdown, the clean-up after a crash) finds them whatever
// its own cgroup.
type Placement struct {
	Kind string `json:"kind"`
	// Dir is the cluster's cgroup as an absolute path in every hierarchy
	// it uses: "/smpc/ID", "/system.slice/smpc-ID.scope", or
	// ".../smpc.service/smpc-ID". The OSlets' cgroups are its children.
	Dir string `json:"dir"`
	// Top is the highest cgroup the boot made, removed at shutdown once no
	// other cluster uses it.
	Top string `json:"top"`
	// Unit is the transient systemd unit that holds the cluster.
	Unit string `json:"unit,omitempty"`
}

// OSlet is the absolute cgroup path of OSlet k.
func (p Placement) OSlet(k int) string { return fmt.Sprintf("%s/oslet-%d", p.Dir, k) }

// controllers are what an OSlet's cgroup needs on v2: what Create sets.
var controllers = []string{"cpu", "cpuset", "memory", "pids"}

// Place decides where the cluster id's cgroups go, makes the cluster's
// cgroup there with the controllers the OSlets need, and moves into it what
// must move: the boot's own processes into a leaf of a delegated cgroup, or
// the cluster's PID 1 (host PID reaper) into its systemd scope. What the
// host cannot give is said in one line with how to give it.
func Place(id string, reaper int) (Placement, error) {
	if !Unified() {
		if systemdRuns() {
			return placeSystemd(id, reaper)
		}
		return placeTop(id)
	}
	own, err := ownCgroup()
	if err != nil {
		return Placement{}, err
	}
	switch {
	case own != "/" && delegated(own):
		return placeDelegated(id, own)
	case own == "/" && namespaceRoot():
		// A container's cgroup namespace, whose root its runtime
		// delegated to it.
		return placeDelegated(id, own)
	case systemdRuns():
		return placeSystemd(id, reaper)
	}
	return placeTop(id)
}

// ownCgroup returns this process's v2 cgroup as its cgroup namespace sees
// it. A process that joined a container's cgroup namespace from outside
// (nsenter -C, as an administrator does) is in a cgroup above that
// namespace's root, which the kernel shows as a path that climbs out of it
// ("/../user.slice/..."): for it the highest cgroup it may change is the
// namespace's root, "/" (a cleaned path would name a cgroup of the
// namespace that is not its own).
func ownCgroup() (string, error) {
	own, err := cgroup2.PidGroupPath(os.Getpid())
	if err != nil {
		return "", fmt.Errorf("cgroup: find own cgroup: %w", err)
	}
	return withinNamespace(own), nil
}

// withinNamespace turns a cgroup v2 path as /proc/PID/cgroup shows it into
// the cgroup of the namespace's that its process may change.
func withinNamespace(path string) string {
	if path == "/.." || strings.HasPrefix(path, "/../") {
		return "/"
	}
	return filepath.Clean(path)
}

// delegated reports whether the v2 cgroup path was delegated to its
// processes: systemd marks a unit's cgroup so when its Delegate= is set.
func delegated(path string) bool {
	dir := filepath.Join(unifiedMount, path)
	for _, attr := range []string{"trusted.delegate", "user.delegate"} {
		buf := make([]byte, 8)
		if n, err := unix.Getxattr(dir, attr, buf); err == nil && string(buf[:n]) == "1" {
			return true
		}
	}
	return false
}

// namespaceRoot reports whether the root of the cgroup v2 hierarchy that
// this process sees is the root of a cgroup namespace, not the host's: the
// host's root cgroup alone has no cgroup.type.
func namespaceRoot() bool {
	_, err := os.Stat(filepath.Join(unifiedMount, "cgroup.type"))
	return err == nil
}

// systemdRuns reports whether systemd manages this host, as sd_booted(3)
// tells.
func systemdRuns() bool {
	_, err := os.Stat("/run/systemd/system")
	return err == nil
}

const unifiedMount = "/sys/fs/cgroup"

func placeTop(id string) (Placement, error) {
	p := Placement{Kind: PlacedTop, Dir: "/smpc/" + id, Top: "/smpc"}
	if Unified() {
		return p, makeV2(p.Dir, "/")
	}
	for _, root := range v1Roots() {
		if err := os.MkdirAll(filepath.Join(root, p.Dir), 0o755); err != nil {
			return p, explain("make "+filepath.Join(root, p.Dir), err)
		}
	}
	return p, nil
}

// placeDelegated puts the cluster in the delegated cgroup own: every
// process now in own moves into own's leaf "supervisor", so that own may
// enable controllers for the OSlets' cgroups beside it.
func placeDelegated(id, own string) (Placement, error) {
	p := Placement{Kind: PlacedDelegated, Dir: filepath.Join(own, "smpc-"+id)}
	p.Top = p.Dir
	// Before anything moves: a refused boot leaves the service as it was.
	if err := checkOffered(filepath.Join(unifiedMount, own)); err != nil {
		return p, err
	}
	if err := moveAll(own, filepath.Join(own, SupervisorLeaf)); err != nil {
		return p, err
	}
	return p, makeV2(p.Dir, own)
}

// SupervisorLeaf and ReaperLeaf hold the processes of smpc that are in no
// OSlet, where the cluster's cgroup is theirs too.
const (
	SupervisorLeaf = "supervisor"
	ReaperLeaf     = "reaper"
)

// Unit is the name of the systemd scope of cluster id.
func Unit(id string) string { return "smpc-" + id + ".scope" }

// placeSystemd asks systemd for a transient scope that holds the cluster's
// PID 1 and is delegated to smpc. (containerd's cgroup2.NewSystemd would
// make the unit, but it never sets Delegate=, without which systemd may
// take back the controllers below the scope; so the D-Bus call is made
// here, with go-systemd.)
func placeSystemd(id string, reaper int) (Placement, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := systemd.NewWithContext(ctx)
	if err != nil {
		return Placement{}, fmt.Errorf("cgroup: systemd runs this host but does not answer on D-Bus (%w); smpc makes its cgroups as a systemd unit there", err)
	}
	defer conn.Close()
	unit := Unit(id)
	conn.ResetFailedUnitContext(ctx, unit) // a failed scope of a crashed cluster of this name
	props := []systemd.Property{
		systemd.PropDescription("smpc cluster " + id),
		systemd.PropSlice("system.slice"),
		systemd.PropPids(uint32(reaper)),
		{Name: "DefaultDependencies", Value: godbus.MakeVariant(false)},
		{Name: "Delegate", Value: godbus.MakeVariant(true)},
		// Without these, systemd delegates the controllers it enables
		// anyway, which need not include cpuset.
		{Name: "DelegateControllers", Value: godbus.MakeVariant(controllers)},
	}
	if err := startScope(ctx, conn, unit, props); err != nil {
		// systemd before 236 knows no DelegateControllers.
		conn.ResetFailedUnitContext(ctx, unit)
		if err2 := startScope(ctx, conn, unit, props[:len(props)-1]); err2 != nil {
			return Placement{}, fmt.Errorf("cgroup: make systemd scope %s: %w", unit, err)
		}
	}
	path, err := cgroupOf(reaper)
	if err != nil {
		return Placement{}, err
	}
	p := Placement{Kind: PlacedSystemd, Dir: path, Top: path, Unit: unit}
	if !Unified() {
		// cgroup v1: systemd made the scope in the hierarchies it manages
		// (not cpuset, where Create makes the same path, as runc's v1
		// systemd driver does, its slice included: the shutdown removes
		// that slice where it is empty, which is where systemd does not
		// use it); a v1 cgroup may hold processes and children both, so
		// the PID 1 stays where it is.
		p.Top = filepath.Dir(p.Dir)
		return p, nil
	}
	if err := moveAll(p.Dir, p.Dir+"/"+ReaperLeaf); err != nil {
		return p, err
	}
	return p, makeV2(p.Dir, p.Dir)
}

// Adopt makes process pid (an OSlet's init, just started) a process of
// the cluster's systemd scope where its cgroups are v1: there systemd knows
// a unit's processes by its own hierarchies (name=systemd, and the unified
// one of a hybrid host), where smpc makes no OSlet cgroups. On cgroup v2
// an OSlet's cgroup is below the scope already.
func (p Placement) Adopt(pid int) error {
	if p.Kind != PlacedSystemd || Unified() {
		return nil
	}
	for _, mount := range []string{"/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"} {
		dir := filepath.Join(mount, p.Dir)
		if _, err := os.Stat(dir); err != nil {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
			return explain(fmt.Sprintf("move pid %d into systemd scope %s", pid, p.Unit), err)
		}
	}
	return nil
}

func startScope(ctx context.Context, conn *systemd.Conn, unit string, props []systemd.Property) error {
	done := make(chan string, 1)
	if _, err := conn.StartTransientUnitContext(ctx, unit, "fail", props, done); err != nil {
		return err
	}
	select {
	case result := <-done:
		if result != "done" {
			return fmt.Errorf("systemd: start %s: %s", unit, result)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("systemd: start %s: %w", unit, ctx.Err())
	}
}

// StopUnit stops the systemd scope of a cluster, if it is still there: a
// scope outlives a cluster whose processes did not all end.
func StopUnit(unit string) error {
	if unit == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := systemd.NewWithContext(ctx)
	if err != nil {
		return fmt.Errorf("cgroup: stop systemd scope %s: %w", unit, err)
	}
	defer conn.Close()
	done := make(chan string, 1)
	if _, err := conn.StopUnitContext(ctx, unit, "replace", done); err != nil {
		var derr godbus.Error
		if errors.As(err, &derr) && derr.Name == "org.freedesktop.systemd1.NoSuchUnit" {
			return nil
		}
		return fmt.Errorf("cgroup: stop systemd scope %s: %w", unit, err)
	}
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("cgroup: stop systemd scope %s: %w", unit, ctx.Err())
	}
	conn.ResetFailedUnitContext(ctx, unit)
	return nil
}

// cgroupOf reads the cgroup systemd put process pid in: its path in
// systemd's own v1 hierarchy (name=systemd) where there is one, else in
// the unified hierarchy.
func cgroupOf(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", fmt.Errorf("cgroup: find the cgroup of pid %d: %w", pid, err)
	}
	var unified, named string
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3) // ID:CONTROLLERS:PATH
		switch {
		case len(parts) != 3:
		case parts[0] == "0" && parts[1] == "":
			unified = parts[2]
		case parts[1] == "name=systemd":
			named = parts[2]
		}
	}
	if named != "" {
		return named, nil
	}
	if unified != "" {
		return unified, nil
	}
	return "", fmt.Errorf("cgroup: pid %d is in no cgroup of systemd's", pid)
}

// moveAll moves every process of the v2 cgroup from into the new leaf to.
func moveAll(from, to string) error {
	dir := filepath.Join(unifiedMount, to)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return explain("make "+dir, err)
	}
	// A process forked while the list was read is found the next time.
	for range 100 {
		b, err := os.ReadFile(filepath.Join(unifiedMount, from, "cgroup.procs"))
		if err != nil {
			return explain("list the processes of "+filepath.Join(unifiedMount, from), err)
		}
		pids := strings.Fields(string(b))
		if len(pids) == 0 {
			return nil
		}
		for _, pid := range pids {
			if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(pid), 0); err != nil && !errors.Is(err, unix.ESRCH) {
				return explain(fmt.Sprintf("move pid %s from %s to %s", pid, from, to), err)
			}
		}
	}
	return fmt.Errorf("cgroup: processes keep appearing in %s; cannot empty it for the cluster's cgroups", from)
}

// makeV2 makes the v2 cgroup dir and enables the OSlets' controllers on
// the way down to it from from (the highest cgroup smpc may change: the
// root, or the cgroup delegated to it), and in dir itself.
func makeV2(dir, from string) error {
	full := filepath.Join(unifiedMount, dir)
	if err := os.MkdirAll(full, 0o755); err != nil {
		return explain("make "+full, err)
	}
	rel, err := filepath.Rel(from, dir)
	if err != nil || strings.HasPrefix(rel, "..") {
		return fmt.Errorf("cgroup: %s is not below %s", dir, from)
	}
	levels := []string{from}
	for _, elem := range strings.Split(rel, "/") {
		if elem != "." {
			levels = append(levels, filepath.Join(levels[len(levels)-1], elem))
		}
	}
	for _, level := range levels {
		if err := enableControllers(filepath.Join(unifiedMount, level)); err != nil {
			return err
		}
	}
	return nil
}

// enableControllers enables the OSlets' controllers for dir's children,
// where they are not already.
func enableControllers(dir string) error {
	if err := checkOffered(dir); err != nil {
		return err
	}
	enabled, err := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
	if err != nil {
		return explain("read the controllers enabled below "+dir, err)
	}
	for _, c := range controllers {
		if slices.Contains(strings.Fields(string(enabled)), c) {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+"+c), 0); err != nil {
			if errors.Is(err, unix.EBUSY) {
				return fmt.Errorf("cgroup: cannot enable the %s controller below %s: it holds processes (%s), and cgroup v2 enables none below a cgroup that does; "+
					"move them into a leaf cgroup first (mkdir %s/init; write each PID into %s/init/cgroup.procs)",
					c, dir, procsOf(dir), dir, dir)
			}
			return explain(fmt.Sprintf("enable the %s controller below %s", c, dir), err)
		}
	}
	return nil
}

// checkOffered says which controller the OSlets need that the cgroup dir
// cannot give its children.
func checkOffered(dir string) error {
	offered, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return explain("read the controllers of "+dir, err)
	}
	var missing []string
	for _, c := range controllers {
		if !slices.Contains(strings.Fields(string(offered)), c) {
			missing = append(missing, c)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	what := "the " + strings.Join(missing, ", ") + " controller"
	if len(missing) > 1 {
		what += "s"
	}
	return fmt.Errorf("cgroup: %s does not offer %s (it offers: %s); smpc needs %s: "+
		"delegate them to it (systemd: Delegate=yes; a container: a cgroup namespace with those controllers enabled above it)",
		dir, what, strings.TrimSpace(string(offered)), strings.Join(controllers, ", "))
}

func procsOf(dir string) string {
	b, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	pids := strings.Fields(string(b))
	if len(pids) > 5 {
		return strings.Join(pids[:5], " ") + " and " + strconv.Itoa(len(pids)-5) + " more"
	}
	return strings.Join(pids, " ")
}

// explain turns an error of the host's cgroup file system in operation op
// into what to do about it.
func explain(op string, err error) error {
	switch {
	case errors.Is(err, unix.EROFS):
		return fmt.Errorf("cgroup: %s: the cgroup file system is read-only, and smpc makes cgroups: mount it read-write (a container: give it a writable cgroup, e.g. docker run --privileged --cgroupns=private)", op)
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return fmt.Errorf("cgroup: %s: %w: this cgroup was not delegated to smpc (systemd: Delegate=yes; run smpc boot as root)", op, err)
	}
	return fmt.Errorf("cgroup: %s: %w", op, err)
}

// v1Roots lists the mount points of the v1 hierarchies smpc uses that this
// host has.
func v1Roots() []string {
	var roots []string
	for _, sub := range v1Names {
		if root := filepath.Join("/sys/fs/cgroup", sub); exists(root) {
			roots = append(roots, root)
		}
	}
	return roots
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// RemoveCluster removes the cluster's cgroup and what smpc made above it
// once its processes are gone: its leaves, its own cgroup, then each
// parent up to top that no other cluster uses; then its systemd scope.
func RemoveCluster(p Placement) error {
	roots := []string{unifiedMount}
	if !Unified() {
		roots = v1Roots()
	}
	for _, root := range roots {
		os.Remove(filepath.Join(root, p.Dir, ReaperLeaf))
		for dir := p.Dir; dir != "/" && dir != "." && p.Top != ""; dir = filepath.Dir(dir) {
			os.Remove(filepath.Join(root, dir)) // fails harmlessly while in use
			if dir == p.Top {
				break
			}
		}
	}
	return StopUnit(p.Unit)
}
