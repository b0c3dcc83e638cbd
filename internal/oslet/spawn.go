package oslet

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc/internal/fabric"
	"github.com/smpc-cluster/smpc/internal/partition"
	"github.com/smpc-cluster/smpc/internal/trap"
	"github.com/smpc-cluster/smpc/internal/vproc"
)

// EnvOSlet is set in every process smpc starts to the index of its OSlet, for
// scripts that want to know where they run. smpc itself never reads it.
const EnvOSlet = "SMPC_OSLET"

// spawn starts a process and returns its PID and the OSlet it started on.
func (i *Init) spawn(who *caller, r *fabric.Request, req *fabric.SpawnRequest) (vproc.PID, int, error) {
	if len(req.Argv) == 0 || req.Argv[0] == "" {
		return 0, 0, fabric.Errorf(fabric.CodeInvalid, "oslet %d: spawn: empty command", i.cfg.Index)
	}
	cred, err := credOf(who, req.Cred)
	if err != nil {
		return 0, 0, err
	}
	policy, err := vproc.ParsePolicy(req.Policy)
	if err != nil {
		return 0, 0, fabric.Errorf(fabric.CodeInvalid, "oslet %d: %v", i.cfg.Index, err)
	}
	target, origin := req.On, req.Origin
	if who.role != fabric.RolePeer {
		// This OSlet took the request from its caller: it places it. The
		// new process keeps the policy for its own descendants.
		origin = who.origin
		if policy == "" {
			policy = i.inheritedPolicy(who)
		}
		if target == 0 {
			target = i.place(policy, &i.rr, 0)
		}
	}
	if target == 0 {
		target = i.cfg.Index
	}
	p, err := i.forwardTo(who, target)
	if err != nil {
		return 0, 0, err
	}
	if p != nil {
		placed := *req
		placed.On, placed.Policy, placed.Origin = target, string(policy), origin
		reply, _, err := forwardAs[fabric.SpawnReply](who.ctx, p, fabric.OpSpawn, &placed, cred, r.Files)
		if err != nil {
			return 0, 0, err
		}
		pid := vproc.PID(reply.PID)
		if !req.Detach {
			i.attach(who.conn, target, pid)
		}
		return pid, target, nil
	}
	pid, err := i.startLocal(r.Files, req, cred, policy, origin)
	if err == nil && !req.Detach && who.role != fabric.RolePeer {
		i.attach(who.conn, i.cfg.Index, pid)
	}
	return pid, i.cfg.Index, err
}

func (i *Init) attach(conn *fabric.Conn, k int, pid vproc.PID) {
	i.mu.Lock()
	i.attached[conn] = append(i.attached[conn], attachedProc{oslet: k, pid: pid})
	i.mu.Unlock()
}

// inheritedPolicy finds the launch policy a caller inherits: that of its
// nearest ancestor started through smpc, or local. The kernel's parent links
// make it an inherited attribute no process can forge.
func (i *Init) inheritedPolicy(who *caller) vproc.Policy {
	if who.role != fabric.RoleClient {
		return vproc.PolicyLocal
	}
	for pid, hops := who.local, 0; pid > 1 && hops < 1024; hops++ {
		if pol, ok := i.table.Policy(vproc.PID(pid)); ok {
			return pol
		}
		i.mu.Lock()
		pl, placed := i.placements[vproc.PID(pid)]
		i.mu.Unlock()
		if placed {
			return vproc.Policy(pl.Policy)
		}
		s, err := readProc(pid)
		if err != nil {
			break
		}
		pid = s.ppid
	}
	return vproc.PolicyLocal
}

// place picks the OSlet for a launch from here under policy; rr is the
// round-robin cursor of this kind of launch, stay the OSlet the process
// is on (0 for a new one), which least-loaded keeps on a tie.
func (i *Init) place(policy vproc.Policy, rr *atomic.Uint64, stay int) int {
	switch policy {
	case vproc.PolicyRoundRobin:
		up := i.upOSlets()
		return up[int((rr.Add(1)-1)%uint64(len(up)))]
	case vproc.PolicyLeastLoaded:
		return i.loads.pick(i.upOSlets(), stay, int(i.pid))
	}
	return i.cfg.Index
}

// upOSlets lists this OSlet and the peers that are up, in order.
func (i *Init) upOSlets() []int {
	up := []int{i.cfg.Index}
	for k, p := range i.peers {
		if p.up() {
			up = append(up, k)
		}
	}
	sort.Ints(up)
	return up
}

// startLocal starts a process in this OSlet, as its caller, with the
// caller's descriptors as its standard input, output and error.
func (i *Init) startLocal(files []*os.File, req *fabric.SpawnRequest, cred fabric.Cred, policy vproc.Policy, origin int) (vproc.PID, error) {
	name := req.Argv[0]
	fail := func(code fabric.Code, err error) (vproc.PID, error) {
		return 0, fabric.Errorf(code, "oslet %d: spawn %q: %v", i.cfg.Index, name, err)
	}
	fileAt := func(idx int) *os.File {
		if idx >= 0 && idx < len(files) {
			return files[idx]
		}
		return nil
	}
	// The working directory travels as a descriptor: a path may not exist
	// here (the caller's /tmp is private to its own OSlet).
	dir := req.Dir
	if f := fileAt(req.DirFile); f != nil {
		dir = fmt.Sprintf("/proc/self/fd/%d", f.Fd())
	}
	env := withEnv(req.Env, EnvOSlet, strconv.Itoa(i.cfg.Index))
	if i.cfg.Bin != "" {
		env = withSmpcOnPath(env, i.cfg.Bin)
	}
	path, err := lookPath(name, env, dir)
	if errors.Is(err, errNoExec) {
		return fail(fabric.CodeNoExec, err)
	} else if err != nil {
		return fail(fabric.CodeNotFound, err)
	}
	// The new process starts in dir, and the descriptor that dir names
	// is gone once its own descriptors are in place: a program found
	// there is run by its path from there.
	if rest, ok := strings.CutPrefix(path, dir+"/"); ok && dir != req.Dir {
		path = "./" + rest
	}
	// The process gets every descriptor its caller handed over, at the
	// same numbers, as a local exec would; 0, 1 and 2 default to
	// /dev/null, and every other number is closed.
	inherit := []uintptr{^uintptr(0), ^uintptr(0), ^uintptr(0)}
	for _, fd := range req.Fds {
		f := fileAt(fd.File)
		if f == nil || fd.Num < 0 || fd.Num >= maxInheritedFd {
			return fail(fabric.CodeInvalid, fmt.Errorf("descriptor %d: bad hand-over", fd.Num))
		}
		if origin != i.cfg.Index && !req.AllowSockets {
			// The seed's rule: no process holding a network socket is
			// created on another OSlet, since its packets arrive at the
			// caller's network stack.
			if kind := networkSocket(f); kind != "" {
				return 0, fabric.Errorf(fabric.CodeRefused,
					"oslet %d: spawn %q: refused: fd %d is a %s socket, and a process holding a network socket is not created on another OSlet (override with --allow-sockets)",
					i.cfg.Index, name, fd.Num, kind)
			}
		}
		for len(inherit) <= fd.Num {
			inherit = append(inherit, ^uintptr(0))
		}
		inherit[fd.Num] = f.Fd()
	}
	for n := 0; n < 3; n++ {
		if inherit[n] == ^uintptr(0) {
			inherit[n] = i.spawner.devNull
		}
	}
	groups := make([]uint32, len(cred.Groups))
	copy(groups, cred.Groups)
	exe, argv := path, req.Argv
	var traps []string
	if req.DirectDevices {
		traps = append(traps, trap.TrapOpens)
	}
	if policy.Spreads() {
		traps = append(traps, trap.TrapExecs)
	}
	var stageEnd, stageChild *os.File
	if len(traps) > 0 {
		// The process starts as smpc's exec stage, which installs the
		// filter that traps its opens or execs (each new program of a
		// spreading policy is placed before it runs) and hands the
		// listener back here.
		if !trap.DirectSupported {
			return fail(fabric.CodeInvalid, errors.New("trapped system calls (direct device opens, spreading launch policies) are not supported on this architecture"))
		}
		if stageEnd, stageChild, err = trap.ListenerPair(); err != nil {
			return fail(fabric.CodeInternal, err)
		}
		defer stageEnd.Close()
		// The stage's socket takes the first number above the
		// descriptors handed over (a make's jobserver holds 3 and 4),
		// and the stage closes it before the program starts.
		stageFd := len(inherit)
		inherit = append(inherit, stageChild.Fd())
		exe, argv = i.stageBinary(), append([]string{"smpc", trap.ExecStage, strings.Join(traps, ","), strconv.Itoa(stageFd), path}, req.Argv...)
	}
	pid, err := i.spawner.forkExec(exe, argv, &syscall.ProcAttr{
		Dir:   dir,
		Env:   env,
		Files: inherit,
		Sys: &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: cred.UID, Gid: cred.GID, Groups: groups},
			Setpgid:    !req.Detach,
			Setsid:     req.Detach,
		},
	})
	if stageChild != nil {
		// Only the stage holds its end now: if it dies, the wait ends.
		stageChild.Close()
	}
	if err == nil && stageEnd != nil {
		listener, lerr := trap.ReceiveListener(stageEnd, 10*time.Second)
		if lerr != nil {
			unix.Kill(pid, unix.SIGKILL)
			return fail(fabric.CodeInternal, fmt.Errorf("exec stage: %w", lerr))
		}
		trap := trap.Trap{Stage: pid}
		if policy.Spreads() {
			trap.Policy = string(policy)
		}
		go i.direct.Serve(listener, trap)
	}
	if err != nil {
		switch {
		case errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR):
			return fail(fabric.CodeNotFound, err)
		case errors.Is(err, unix.EACCES) || errors.Is(err, unix.ENOEXEC):
			return fail(fabric.CodeNoExec, err)
		case errors.Is(err, unix.EPERM):
			return fail(fabric.CodePermission, err)
		}
		return fail(fabric.CodeInternal, err)
	}
	rec := vproc.Process{PID: vproc.PID(pid), Parent: i.pid, UID: cred.UID, Policy: policy, Argv: req.Argv}
	if !req.Detach {
		rec.Parent, rec.ParentOSlet = vproc.PID(cred.PID), origin
	}
	i.table.Add(rec)
	return vproc.PID(pid), nil
}

// maxInheritedFd bounds the descriptor numbers a spawn hands over.
const maxInheritedFd = 1 << 16

// placeExec places a process whose exec a spreading policy trapped: it moves
// it into the cgroup of the OSlet the policy picks (its CPUs and memory),
// before the new program runs. The process keeps what it had: its files,
// its /tmp and its network, as a migrated process kept its home's I/O in
// MOSIX; only where it runs changes.
func (i *Init) placeExec(pid int, policy string) {
	cur := vproc.OSletOf(pid)
	target := i.place(vproc.Policy(policy), &i.rrExec, cur)
	note := ""
	if target != cur {
		placer, err := i.placer(target)
		if err == nil {
			err = placer.Place(pid)
		}
		if err != nil {
			note = fmt.Sprintf("not moved to oslet %d: %v", target, err)
		}
		if note != "" {
			i.log.Warn("place exec", "pid", pid, "policy", policy, "note", note)
		}
	}
	i.mu.Lock()
	i.placements[vproc.PID(pid)] = fabric.Placement{PID: int32(pid), Policy: policy, Note: note}
	if len(i.placements) >= i.placementsCap {
		// A build places thousands of short-lived programs: forget the
		// ended ones now and then, so that the record stays the size of
		// what runs.
		i.pruneLocked()
		i.placementsCap = max(2*len(i.placements), minPlacementsCap)
	}
	i.mu.Unlock()
}

// placer returns the Placer of OSlet k's cgroup, opened at its first
// placement.
func (i *Init) placer(k int) (*partition.Placer, error) {
	i.placersMu.Lock()
	defer i.placersMu.Unlock()
	if p, ok := i.placers[k]; ok {
		return p, nil
	}
	files, ok := i.cfg.Cgroups[k]
	if !ok {
		return nil, fmt.Errorf("oslet %d has no cgroup in the boot table", k)
	}
	p, err := files.OpenPlacer()
	if err != nil {
		return nil, err
	}
	i.placers[k] = p
	return p, nil
}

// minPlacementsCap is the size the placement record is first pruned at.
const minPlacementsCap = 1024

// pruneLocked forgets the placements of processes that have ended.
func (i *Init) pruneLocked() {
	for pid := range i.placements {
		if unix.Kill(int(pid), 0) == unix.ESRCH {
			delete(i.placements, pid)
		}
	}
}

// placementList lists the live processes placed from here, forgetting
// those that have ended.
func (i *Init) placementList() []fabric.Placement {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.pruneLocked()
	out := make([]fabric.Placement, 0, len(i.placements))
	for _, pl := range i.placements {
		out = append(out, pl)
	}
	return out
}

// networkSocket names the family of f if f is a socket other than a Unix
// one; Unix sockets and pipes are kernel objects every OSlet shares.
func networkSocket(f *os.File) string {
	var st unix.Stat_t
	if unix.Fstat(int(f.Fd()), &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return ""
	}
	dom, err := unix.GetsockoptInt(int(f.Fd()), unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil || dom == unix.AF_UNIX {
		return ""
	}
	switch dom {
	case unix.AF_INET:
		return "TCP/IP (inet)"
	case unix.AF_INET6:
		return "TCP/IP (inet6)"
	case unix.AF_NETLINK:
		return "netlink"
	case unix.AF_PACKET:
		return "packet"
	}
	return fmt.Sprintf("family-%d", dom)
}

var errNoExec = errors.New("permission denied")

const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// lookPath finds name as the caller's shell would: in the caller's PATH, or
// relative to the caller's working directory when it holds a slash.
func lookPath(name string, env []string, dir string) (string, error) {
	if strings.Contains(name, "/") {
		p := name
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		return p, executable(p)
	}
	pathVar := defaultPath
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			pathVar = v
		}
	}
	for _, d := range filepath.SplitList(pathVar) {
		if d == "" {
			d = "."
		}
		if !filepath.IsAbs(d) {
			d = filepath.Join(dir, d)
		}
		if p := filepath.Join(d, name); executable(p) == nil {
			return p, nil
		}
	}
	return "", errors.New("executable file not found in $PATH")
}

func executable(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if st.IsDir() || st.Mode()&0o111 == 0 {
		return fmt.Errorf("%s: %w", p, errNoExec)
	}
	return nil
}

// withSmpcOnPath adds bin, where the cluster keeps smpc, to the end of
// PATH, so that smpc is found by name in every OSlet, as on a host where it
// is installed; an smpc earlier on PATH still comes first. Appending, not
// looking smpc up, keeps a spawn free of a stat per PATH directory.
func withSmpcOnPath(env []string, bin string) []string {
	pathVar := defaultPath
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			pathVar = v
		}
	}
	if slices.Contains(filepath.SplitList(pathVar), bin) {
		return env
	}
	if pathVar != "" {
		pathVar += ":"
	}
	return withEnv(env, "PATH", pathVar+bin)
}

func withEnv(env []string, key, value string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if !strings.HasPrefix(kv, key+"=") {
			out = append(out, kv)
		}
	}
	return append(out, key+"="+value)
}

// stageBinary is the binary the exec stage runs from: smpc, the small one
// the boot put in the cluster's bin directory, whose start-up each spawn
// under a spreading policy pays; this init's own binary, which takes the
// same command, where there is none.
func (i *Init) stageBinary() string {
	if i.cfg.Bin != "" {
		return filepath.Join(i.cfg.Bin, "smpc")
	}
	return "/proc/self/exe"
}

// reaped records the end of a child the init reaped. A child killed by
// SIGKILL while the OSlet's OOM killer has killed more processes than the
// init has told of is reported as the OOM killer's: the kernel says how
// many it killed in the OSlet, not whom, so a SIGKILL from a user at the
// moment the OOM killer takes a process the init does not reap (a
// grandchild, which its own parent reaps) would be told as an OOM kill too.
func (i *Init) reaped(pid vproc.PID, ws unix.WaitStatus) {
	st := vproc.StatusFromWait(ws)
	if ws.Signaled() && ws.Signal() == unix.SIGKILL {
		if kills := i.cg.OOMKills(); kills > i.oomAttributed {
			i.oomAttributed++
			st.OOM, st.OOMOSlet, st.MemoryLimit = true, i.cfg.Index, i.self.Memory
		}
	}
	i.table.Reaped(pid, st)
}
