// Package partition gives each OSlet its share of the machine: a cgroup with
// its cpuset (CPUs and memory nodes), a memory limit and a pids limit, on
// cgroup v1 and on cgroup v2, through containerd's cgroups library. It is the
// enforcement half of the partition plan.
package partition

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc/internal/plan"
	"github.com/smpc-cluster/smpc/internal/vproc"
)

// An OSlet's cgroup holds two: its init's alone (InitLeaf) and that of
// every process the OSlet runs (ProcsLeaf). The OSlet's limits are the
// plan's on the processes' cgroup; the init's leaf has a reserve of its own
// (InitMemory, InitPids), and the OSlet's cgroup the sum. So the OOM killer
// of an OSlet whose processes fill its memory chooses among them, never the
// init, and a fork bomb that reaches the OSlet's pids limit leaves the init
// its threads: the init's death would end the whole OSlet. (A lower
// oom_score_adj would need CAP_SYS_RESOURCE, which root lacks on some
// hosts, and would not keep the init's threads.)
//
// On cgroup v2 the processes' cgroup has two leaves of its own, under its
// limits: SpawnedLeaf, where the init starts processes, bound to the
// OSlet's memory nodes, and PlacedLeaf, where a launch policy moves a
// program at its exec. cgroup v2's cpuset always migrates a process's
// memory when it moves to a cpuset of other memory nodes, and at an exec
// that memory is still the parent's: a vfork child (make's, a shell's
// posix_spawn) shares its parent's whole address space, a fork child its
// parent's pages copy-on-write. Moving them would copy the parent's memory
// to the other node at every placed exec and take its pages away from the
// CPUs it runs on. So PlacedLeaf's processes may use every memory node of
// the cluster (the move then migrates nothing) and get the OSlet's own by
// running on its CPUs: the kernel allocates from the CPU's node first,
// and from another only when that one is full. cgroup v1 migrates nothing
// unless cpuset.memory_migrate is set, which smpc does not set, so there
// ProcsLeaf is one leaf for both.
const (
	InitLeaf    = "init"
	ProcsLeaf   = "procs"
	SpawnedLeaf = "spawned"
	PlacedLeaf  = "placed"
	// InitMemory and InitPids are the init's reserve: what it may use
	// whatever the OSlet's processes do (its own use is bounded by the
	// limits of package oslet).
	InitMemory       = plan.InitMemory
	InitPids   int64 = 1024
)

// Cgroup is one OSlet's cgroup and the cgroups below it.
type Cgroup struct {
	// Group is the cgroup's absolute path as Create was given it, the
	// same in every hierarchy.
	Group string
	// spawned and placed are made on cgroup v2 only.
	oslet, init, procs, spawned, placed cgroupHandle
	Stats                               StatFiles
}

// cgroupHandle is one cgroup as the library handles it, on v1 or v2.
type cgroupHandle struct {
	v1 cgroup1.Cgroup
	v2 *cgroup2.Manager
}

// StatFiles names an OSlet's cgroup files by their host paths, so that an
// init (which sees the cgroup from inside) can read its use and move
// processes into it without the library.
type StatFiles struct {
	Memory string `json:"memory"` // bytes in use, the OSlet's whole
	Tasks  string `json:"pids"`   // tasks, the OSlet's whole
	// Procs are the cgroup.procs files that list the OSlet's processes:
	// its init's leaf's first, then its processes' leaves' (on v1, in the
	// pids hierarchy).
	Procs []string `json:"procs"`
	// PlaceProcs are the cgroup.procs files that a launch policy moves a
	// process through: on v1 the processes' leaf's in the hierarchies that
	// say where it runs and what it uses (pids, cpuset, memory), so that a
	// move costs three writes, not six; on v2 PlacedLeaf's one file.
	PlaceProcs []string `json:"place_procs"`
	// SpawnTasks are, on v1, the processes' leaf's tasks files in every
	// hierarchy: the thread of the init that starts processes moves itself
	// there, so that what it forks starts in the leaf. SpawnDir is, on
	// v2, SpawnedLeaf's directory, which a fork enters with
	// CLONE_INTO_CGROUP.
	SpawnTasks []string `json:"spawn_tasks,omitempty"`
	SpawnDir   string   `json:"spawn_dir,omitempty"`
	// OOMEvents is the processes' cgroup's file that counts its OOM kills
	// (memory.oom_control on v1, memory.events on v2, which counts its
	// leaves': "oom_kill N").
	OOMEvents string `json:"oom_events,omitempty"`
}

// OOMKills returns how many processes the OSlet's OOM killer has killed.
func (s StatFiles) OOMKills() int {
	b, err := os.ReadFile(s.OOMEvents)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

// Placer moves processes into one OSlet's placement hierarchies: where a
// launch policy puts a program, it runs on the OSlet's CPUs and memory and
// is listed among its processes. Its devices rules stay its parent's, as its
// /dev does. A trapped exec waits while it is placed, so the Placer opens
// each cgroup.procs once and a placement is then one write per hierarchy
// (by path, through os.File, it was seven system calls each).
type Placer struct {
	fds   []int
	paths []string
}

// OpenPlacer opens the placement files of s.
func (s StatFiles) OpenPlacer() (*Placer, error) {
	p := &Placer{}
	for _, path := range s.PlaceProcs {
		fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("open %s: %w", path, err)
		}
		p.fds, p.paths = append(p.fds, fd), append(p.paths, path)
	}
	return p, nil
}

// Place moves process pid (in the writer's PID namespace), every thread of
// it.
func (p *Placer) Place(pid int) error {
	b := strconv.AppendInt(make([]byte, 0, 12), int64(pid), 10)
	for n, fd := range p.fds {
		var err error
		for {
			if _, err = unix.Write(fd, b); err != unix.EINTR {
				break
			}
		}
		if err != nil {
			return fmt.Errorf("move pid %d into %s: %w", pid, filepath.Dir(p.paths[n]), err)
		}
	}
	return nil
}

// Close closes the placement files.
func (p *Placer) Close() error {
	for _, fd := range p.fds {
		unix.Close(fd)
	}
	p.fds, p.paths = nil, nil
	return nil
}

// PIDs lists the OSlet's processes, its init among them, as PIDs of the
// reader's PID namespace. On v1 the init is listed in both leaves (its
// spawning thread sits in the processes' one); it comes back once.
func (s StatFiles) PIDs() []int {
	var pids []int
	inits := 0 // the first file's, the init's leaf's
	for n, procs := range s.Procs {
		b, err := vproc.ReadKernelFile(procs)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && !slices.Contains(pids[:inits], pid) {
				pids = append(pids, pid)
			}
		}
		if n == 0 {
			inits = len(pids)
		}
	}
	return pids
}

// FilesOf names the files of the OSlet cgroup group (an absolute cgroup
// path, as Placement.OSlet gives), from the host.
func FilesOf(group string) (StatFiles, error) {
	if !filepath.IsAbs(group) {
		return StatFiles{}, fmt.Errorf("cgroup %q: not an absolute cgroup path", group)
	}
	if Unified() {
		dir := filepath.Join(unifiedMount, group)
		procs := filepath.Join(dir, ProcsLeaf)
		spawned, placed := filepath.Join(procs, SpawnedLeaf), filepath.Join(procs, PlacedLeaf)
		return StatFiles{Memory: filepath.Join(dir, "memory.current"), Tasks: filepath.Join(dir, "pids.current"),
			Procs:      []string{filepath.Join(dir, InitLeaf, "cgroup.procs"), filepath.Join(spawned, "cgroup.procs"), filepath.Join(placed, "cgroup.procs")},
			PlaceProcs: []string{filepath.Join(placed, "cgroup.procs")},
			SpawnDir:   spawned, OOMEvents: filepath.Join(procs, "memory.events")}, nil
	}
	dir := func(subsystem string) string {
		return filepath.Join("/sys/fs/cgroup", subsystem, group)
	}
	s := StatFiles{Memory: filepath.Join(dir("memory"), "memory.usage_in_bytes"), Tasks: filepath.Join(dir("pids"), "pids.current"),
		Procs:     []string{filepath.Join(dir("pids"), InitLeaf, "cgroup.procs"), filepath.Join(dir("pids"), ProcsLeaf, "cgroup.procs")},
		OOMEvents: filepath.Join(dir("memory"), ProcsLeaf, "memory.oom_control")}
	for _, sub := range v1Names {
		if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", sub)); err == nil {
			s.SpawnTasks = append(s.SpawnTasks, filepath.Join(dir(sub), ProcsLeaf, "tasks"))
			if sub == "pids" || sub == "cpuset" || sub == "memory" {
				s.PlaceProcs = append(s.PlaceProcs, filepath.Join(dir(sub), ProcsLeaf, "cgroup.procs"))
			}
		}
	}
	return s, nil
}

// v1Names are the v1 hierarchies smpc makes its cgroups in, pids first.
var v1Names = []string{"pids", "cpuset", "memory", "cpuacct", "devices", "freezer"}

// MemoryUsed returns the memory the cgroup uses now, in bytes.
func (s StatFiles) MemoryUsed() int64 { return readInt(s.Memory) }

// Pids returns the number of tasks in the cgroup.
func (s StatFiles) Pids() int { return int(readInt(s.Tasks)) }

// Unified reports whether the machine runs cgroup v2 alone.
func Unified() bool { return cgroups.Mode() == cgroups.Unified }

// v1Hierarchy limits smpc to the controllers it uses, so that it does not
// depend on (or leave groups in) the others.
func v1Hierarchy() ([]cgroup1.Subsystem, error) {
	all, err := cgroup1.Default()
	if err != nil {
		return nil, err
	}
	var keep []cgroup1.Subsystem
	for _, s := range all {
		switch s.Name() {
		case cgroup1.Cpuset, cgroup1.Memory, cgroup1.Pids, cgroup1.Cpuacct, cgroup1.Devices, cgroup1.Freezer:
			keep = append(keep, s)
		}
	}
	return keep, nil
}

// Create makes the cgroup named group (an absolute path below the
// cluster's placement, e.g. "/smpc/run-ab12/oslet-1") for OSlet o, with the
// device rules devices (a devices cgroup on v1, the equivalent eBPF program
// on v2), and the cgroups below it. clusterMems are the memory nodes of
// every OSlet, which PlacedLeaf may use (v2).
func Create(group string, o plan.OSlet, clusterMems plan.Set, devices []specs.LinuxDeviceCgroup) (*Cgroup, error) {
	c := &Cgroup{Group: group}
	for _, l := range c.layout(o, clusterMems, devices) {
		path := filepath.Join(group, l.name)
		if Unified() {
			r := &cgroup2.Resources{CPU: &cgroup2.CPU{Cpus: l.cpus, Mems: l.mems}, Devices: l.deviceRules}
			if l.memory > 0 {
				r.Memory = &cgroup2.Memory{Max: &l.memory}
				r.Pids = &cgroup2.Pids{Max: l.pids}
			}
			m, err := cgroup2.NewManager(unifiedMount, path, r)
			if err != nil {
				c.Destroy()
				return nil, fmt.Errorf("create cgroup %s (v2): %w", path, err)
			}
			l.handle.v2 = m
			continue
		}
		cg, err := cgroup1.New(cgroup1.StaticPath(path), &specs.LinuxResources{
			CPU:     &specs.LinuxCPU{Cpus: l.cpus, Mems: l.mems},
			Memory:  &specs.LinuxMemory{Limit: &l.memory},
			Pids:    &specs.LinuxPids{Limit: &l.pids},
			Devices: l.deviceRules,
		}, cgroup1.WithHierarchy(v1Hierarchy), allowMissing)
		if err != nil {
			c.Destroy()
			return nil, fmt.Errorf("create cgroup %s (v1): %w", path, err)
		}
		l.handle.v1 = cg
	}
	files, err := FilesOf(group)
	if err != nil {
		c.Destroy()
		return nil, err
	}
	c.Stats = files
	return c, nil
}

// cgroupSpec is one cgroup of an OSlet's: where it is below the OSlet's,
// the handle that keeps it, and what it may use (no memory limit: its
// parent's bounds it).
type cgroupSpec struct {
	name         string
	handle       *cgroupHandle
	cpus, mems   string
	memory, pids int64
	deviceRules  []specs.LinuxDeviceCgroup
}

// layout lists the OSlet's cgroups, each parent before its children. A
// zero o lists them for Load and Destroy.
func (c *Cgroup) layout(o plan.OSlet, clusterMems plan.Set, devices []specs.LinuxDeviceCgroup) []cgroupSpec {
	cpus, mems := o.CPUs.String(), o.Mems.String()
	if !Unified() {
		return []cgroupSpec{
			{"", &c.oslet, cpus, mems, o.Memory + InitMemory, o.Pids + InitPids, devices},
			{InitLeaf, &c.init, cpus, mems, InitMemory, InitPids, nil},
			// The init's spawning thread is a task of the processes' leaf
			// too: one more, so that the processes have the plan's.
			{ProcsLeaf, &c.procs, cpus, mems, o.Memory, o.Pids + 1, nil},
		}
	}
	all := clusterMems.String()
	return []cgroupSpec{
		{"", &c.oslet, cpus, all, o.Memory + InitMemory, o.Pids + InitPids, devices},
		{InitLeaf, &c.init, cpus, mems, InitMemory, InitPids, nil},
		{ProcsLeaf, &c.procs, cpus, all, o.Memory, o.Pids, nil},
		{filepath.Join(ProcsLeaf, SpawnedLeaf), &c.spawned, cpus, mems, 0, 0, nil},
		{filepath.Join(ProcsLeaf, PlacedLeaf), &c.placed, cpus, all, 0, 0, nil},
	}
}

// Load re-opens an OSlet's cgroup from the host side, so that a later boot
// can clean up after a crash.
func Load(group string) (*Cgroup, error) {
	c := &Cgroup{Group: group}
	for _, l := range c.layout(plan.OSlet{}, nil, nil) {
		path := filepath.Join(group, l.name)
		if Unified() {
			m, err := cgroup2.Load(path)
			if err != nil {
				return nil, fmt.Errorf("load cgroup %s: %w", path, err)
			}
			l.handle.v2 = m
			continue
		}
		cg, err := cgroup1.Load(cgroup1.StaticPath(path), cgroup1.WithHierarchy(v1Hierarchy), allowMissing)
		if err != nil {
			if l.name != "" {
				continue // a crash before the leaves were made
			}
			return nil, fmt.Errorf("load cgroup %s: %w", path, err)
		}
		l.handle.v1 = cg
	}
	files, err := FilesOf(group)
	if err != nil {
		return nil, err
	}
	c.Stats = files
	return c, nil
}

// allowMissing lets a v1 cgroup be made without the devices controller,
// which smpc does not use.
func allowMissing(c *cgroup1.InitConfig) error {
	c.InitCheck = cgroup1.AllowAny
	return nil
}

// AddInit moves the OSlet's init (a host PID) into its leaf.
func (c *Cgroup) AddInit(pid int) error {
	var err error
	if c.init.v2 != nil {
		err = c.init.v2.AddProc(uint64(pid))
	} else {
		err = c.init.v1.AddProc(uint64(pid))
	}
	if err != nil {
		return fmt.Errorf("move pid %d into cgroup %s/%s: %w", pid, c.Group, InitLeaf, err)
	}
	return nil
}

func readInt(path string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n
}

// Kill ends every process in the OSlet's cgroup, every leaf, at once:
// cgroup.kill on v2; on v1 the cgroup is frozen first, so that nothing in
// it forks while it is killed, then thawed so that the kills land. before,
// if not nil, sees each process's host PID while the process still exists.
func (c *Cgroup) Kill(before func(hostPID int)) error {
	if c.oslet.v2 != nil {
		if before != nil {
			if procs, err := c.oslet.v2.Procs(true); err == nil {
				for _, p := range procs {
					before(int(p))
				}
			}
		}
		if err := c.oslet.v2.Kill(); err != nil {
			return fmt.Errorf("kill cgroup %s: %w", c.Group, err)
		}
		return nil
	}
	frozen := c.oslet.v1.Freeze() == nil
	procs, err := c.oslet.v1.Processes(cgroup1.Pids, true)
	for _, p := range procs {
		if before != nil {
			before(p.Pid)
		}
		unix.Kill(p.Pid, unix.SIGKILL)
	}
	if frozen {
		c.oslet.v1.Thaw()
	}
	if err != nil {
		return fmt.Errorf("kill cgroup %s: %w", c.Group, err)
	}
	return nil
}

// Destroy kills whatever is left in the OSlet's cgroup and removes it, its
// children first.
func (c *Cgroup) Destroy() error {
	var errs []error
	specs := c.layout(plan.OSlet{}, nil, nil)
	for n := len(specs) - 1; n >= 0; n-- {
		if err := specs[n].handle.destroy(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove cgroup %s: %w", c.Group, err)
	}
	return nil
}

func (g *cgroupHandle) destroy() error {
	switch {
	case g.v2 != nil:
		g.v2.Kill()
		if err := g.v2.Delete(); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	case g.v1 != nil:
		if procs, err := g.v1.Processes(cgroup1.Pids, true); err == nil {
			for _, p := range procs {
				unix.Kill(p.Pid, unix.SIGKILL)
			}
		}
		if err := g.v1.Delete(); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// Cgroup2Root finds where the cgroup v2 hierarchy is mounted: /sys/fs/cgroup
// on a unified host, /sys/fs/cgroup/unified on a hybrid one.
func Cgroup2Root() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS... - FSTYPE SOURCE SUPER
		fields := strings.Fields(sc.Text())
		for i, field := range fields {
			if field == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && fields[3] == "/" {
				return fields[4], nil
			}
		}
	}
	return "", errors.New("no cgroup v2 hierarchy is mounted")
}
