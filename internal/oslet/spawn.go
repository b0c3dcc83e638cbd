package oslet

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc/internal/device"
	"github.com/smpc-cluster/smpc/internal/fabric"
	"github.com/smpc-cluster/smpc/internal/vproc"
)

// EnvOSlet is set in every process smpc starts to the index of its OSlet, for
// scripts that want to know where they run. smpc itself never reads it.
const EnvOSlet = "SMPC_OSLET"

func (i *Init) spawn(who *caller, r *fabric.Request, req *fabric.SpawnRequest) (vproc.PID, error) {
	if len(req.Argv) == 0 || req.Argv[0] == "" {
		return 0, fabric.Errorf(fabric.CodeInvalid, "oslet %d: spawn: empty command", i.cfg.Index)
	}
	cred, err := credOf(who, req.Cred)
	if err != nil {
		return 0, err
	}
	policy, err := vproc.ParsePolicy(req.Policy)
	if err != nil {
		return 0, fabric.Errorf(fabric.CodeInvalid, "oslet %d: %v", i.cfg.Index, err)
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
			target = i.place(policy)
		}
	}
	if target == 0 {
		target = i.cfg.Index
	}
	p, err := i.forwardTo(who, target)
	if err != nil {
		return 0, err
	}
	if p != nil {
		fwd := *req
		fwd.On, fwd.Policy, fwd.Cred, fwd.Origin = target, string(policy), &cred, origin
		var reply fabric.SpawnReply
		if _, err := p.call(who.ctx, fabric.OpSpawn, fwd, r.Files, &reply); err != nil {
			return 0, err
		}
		pid := vproc.PID(reply.PID)
		if !req.Detach {
			i.attach(who.conn, pid)
		}
		return pid, nil
	}
	pid, err := i.startLocal(r.Files, req, cred, policy, origin)
	if err == nil && !req.Detach && who.role != fabric.RolePeer {
		i.attach(who.conn, pid)
	}
	return pid, err
}

func (i *Init) attach(conn *fabric.Conn, pid vproc.PID) {
	i.mu.Lock()
	i.attached[conn] = append(i.attached[conn], pid)
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
		if pol, ok := i.table.Policy(pid); ok {
			return pol
		}
		s, err := readProc(pid)
		if err != nil {
			break
		}
		pid = s.ppid
	}
	return vproc.PolicyLocal
}

// place picks the OSlet for a launch from here under policy.
func (i *Init) place(policy vproc.Policy) int {
	switch policy {
	case vproc.PolicyRoundRobin:
		up := []int{i.cfg.Index}
		for k, p := range i.peers {
			if p.up() {
				up = append(up, k)
			}
		}
		sort.Ints(up)
		return up[int((i.rr.Add(1)-1)%uint64(len(up)))]
	case vproc.PolicyLeastLoaded:
		cpus := float64(len(i.self.CPUs))
		best, bestLoad := i.cfg.Index, float64(runnable()+int(i.placedHere.Load()))/cpus
		var chosen *peer
		for k, p := range i.peers {
			if load, up := p.currentLoad(); up && (load < bestLoad || load == bestLoad && k < best) {
				best, bestLoad, chosen = k, load, p
			}
		}
		if chosen != nil {
			// Count the launch now, so that a burst spreads before the
			// next heartbeat brings the real figure.
			chosen.mu.Lock()
			chosen.load += 1 / float64(chosen.cpus)
			chosen.mu.Unlock()
		} else {
			i.placedHere.Add(1)
		}
		return best
	}
	return i.cfg.Index
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
	path, err := lookPath(name, req.Env, dir)
	if errors.Is(err, errNoExec) {
		return fail(fabric.CodeNoExec, err)
	} else if err != nil {
		return fail(fabric.CodeNotFound, err)
	}
	var fds [3]uintptr
	for n, idx := range req.Stdio {
		f := fileAt(idx)
		if f == nil {
			null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
			if err != nil {
				return fail(fabric.CodeInternal, err)
			}
			defer null.Close()
			f = null
		} else if origin != i.cfg.Index && !req.AllowSockets {
			// The seed's rule: no process holding a network socket is
			// created on another OSlet, since its packets arrive at the
			// caller's network stack.
			if kind := networkSocket(f); kind != "" {
				return 0, fabric.Errorf(fabric.CodeRefused,
					"oslet %d: spawn %q: refused: fd %d is a %s socket, and a process holding a network socket is not created on another OSlet (override with --allow-sockets)",
					i.cfg.Index, name, n, kind)
			}
		}
		fds[n] = f.Fd()
	}
	groups := make([]uint32, len(cred.Groups))
	copy(groups, cred.Groups)
	exe, argv, inherit := path, req.Argv, fds[:]
	var stageEnd, stageChild *os.File
	if req.DirectDevices {
		// The process starts as smpc's exec stage, which installs the
		// filter that traps its opens and hands the listener back here.
		if !device.DirectSupported {
			return fail(fabric.CodeInvalid, errors.New("direct device opens are not supported on this architecture"))
		}
		if stageEnd, stageChild, err = device.ListenerPair(); err != nil {
			return fail(fabric.CodeInternal, err)
		}
		defer stageEnd.Close()
		exe, argv = "/proc/self/exe", append([]string{"smpc", device.ExecStage, path}, req.Argv...)
		inherit = append(inherit, stageChild.Fd())
	}
	pid, err := syscall.ForkExec(exe, argv, &syscall.ProcAttr{
		Dir:   dir,
		Env:   withEnv(req.Env, EnvOSlet, strconv.Itoa(i.cfg.Index)),
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
		listener, lerr := device.ReceiveListener(stageEnd, 10*time.Second)
		if lerr != nil {
			unix.Kill(pid, unix.SIGKILL)
			return fail(fabric.CodeInternal, fmt.Errorf("direct device opens: %w", lerr))
		}
		go i.direct.Serve(listener)
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
	gpid := vproc.Global(i.cfg.Index, pid)
	rec := vproc.Process{PID: gpid, Parent: vproc.Global(i.cfg.Index, 1), UID: cred.UID, Policy: policy, Argv: req.Argv}
	if !req.Detach {
		rec.Parent, rec.ParentOSlet = vproc.PID(cred.PID), origin
	}
	i.table.Add(rec)
	return gpid, nil
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

func withEnv(env []string, key, value string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if !strings.HasPrefix(kv, key+"=") {
			out = append(out, kv)
		}
	}
	return append(out, key+"="+value)
}
