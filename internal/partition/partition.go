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
	"strconv"
	"strings"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc/internal/plan"
)

// Cgroup is one OSlet's cgroup.
type Cgroup struct {
	// Group is the cgroup path below the hierarchy root, the same in every v1
	// hierarchy (under this process's own cgroup there) and in v2.
	Group string
	v1    cgroup1.Cgroup
	v2    *cgroup2.Manager
	Stats StatFiles
}

// StatFiles names a cgroup's files by their host paths, so that an init
// (which sees the cgroup from inside) can read its use and move processes
// into it without the library.
type StatFiles struct {
	Memory string `json:"memory"` // bytes in use
	Tasks  string `json:"pids"`   // tasks
	// Procs are its cgroup.procs files, one per hierarchy it is in (one on
	// v2), the pids hierarchy's first: PIDs reads it.
	Procs []string `json:"procs"`
	// PlaceProcs are those of Procs that a launch policy moves a process
	// through: on v1 the hierarchies that say where it runs and what it
	// uses (pids, which lists the OSlet's processes; cpuset; memory), so
	// that a move costs three writes, not six. On v2 the one file.
	PlaceProcs []string `json:"place_procs"`
}

// Place moves process pid into the cgroup's placement hierarchies: where
// a launch policy puts a program, it runs on the OSlet's CPUs and memory
// and is listed among its processes. Its devices rules stay its parent's,
// as its /dev does. pid is in the writer's PID namespace; each write moves
// the whole process, every thread of it.
func (s StatFiles) Place(pid int) error {
	for _, f := range s.PlaceProcs {
		if err := os.WriteFile(f, []byte(strconv.Itoa(pid)), 0); err != nil {
			return fmt.Errorf("move pid %d into %s: %w", pid, filepath.Dir(f), err)
		}
	}
	return nil
}

// PIDs lists the processes in the cgroup, as PIDs of the reader's PID
// namespace.
func (s StatFiles) PIDs() []int {
	if len(s.Procs) == 0 {
		return nil
	}
	b, err := os.ReadFile(s.Procs[0])
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			pids = append(pids, n)
		}
	}
	return pids
}

// FilesOf names the files of the OSlet cgroup group (as given to Create),
// from the host.
func FilesOf(group string) (StatFiles, error) {
	if Unified() {
		path, err := v2Path(group)
		if err != nil {
			return StatFiles{}, err
		}
		dir := filepath.Join("/sys/fs/cgroup", path)
		procs := []string{filepath.Join(dir, "cgroup.procs")}
		return StatFiles{Memory: filepath.Join(dir, "memory.current"), Tasks: filepath.Join(dir, "pids.current"),
			Procs: procs, PlaceProcs: procs}, nil
	}
	paths, err := cgroup1.ParseCgroupFile("/proc/self/cgroup")
	if err != nil {
		return StatFiles{}, fmt.Errorf("find own cgroup: %w", err)
	}
	dir := func(subsystem string) string {
		return filepath.Join("/sys/fs/cgroup", subsystem, paths[subsystem], group)
	}
	s := StatFiles{Memory: filepath.Join(dir("memory"), "memory.usage_in_bytes"), Tasks: filepath.Join(dir("pids"), "pids.current")}
	// The pids hierarchy first: PIDs reads it.
	for _, sub := range v1Names {
		if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", sub)); err == nil && paths[sub] != "" {
			s.Procs = append(s.Procs, filepath.Join(dir(sub), "cgroup.procs"))
			if sub == "pids" || sub == "cpuset" || sub == "memory" {
				s.PlaceProcs = append(s.PlaceProcs, filepath.Join(dir(sub), "cgroup.procs"))
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

// Create makes the cgroup named group (relative, e.g. "smpc/run-ab12/oslet-1")
// for OSlet o, with the device rules devices (a devices cgroup on v1, the
// equivalent eBPF program on v2).
func Create(group string, o plan.OSlet, devices []specs.LinuxDeviceCgroup) (*Cgroup, error) {
	memory, pids := o.Memory, o.Pids
	cpus, mems := o.CPUs.String(), o.Mems.String()
	if Unified() {
		path, err := v2Path(group)
		if err != nil {
			return nil, err
		}
		m, err := cgroup2.NewManager("/sys/fs/cgroup", path, &cgroup2.Resources{
			CPU:     &cgroup2.CPU{Cpus: cpus, Mems: mems},
			Memory:  &cgroup2.Memory{Max: &memory},
			Pids:    &cgroup2.Pids{Max: pids},
			Devices: devices,
		})
		if err != nil {
			return nil, fmt.Errorf("create cgroup %s (v2): %w", path, err)
		}
		files, err := FilesOf(group)
		if err != nil {
			return nil, err
		}
		return &Cgroup{Group: path, v2: m, Stats: files}, nil
	}
	cg, err := cgroup1.New(cgroup1.NestedPath(group), &specs.LinuxResources{
		CPU:     &specs.LinuxCPU{Cpus: cpus, Mems: mems},
		Memory:  &specs.LinuxMemory{Limit: &memory},
		Pids:    &specs.LinuxPids{Limit: &pids},
		Devices: devices,
	}, cgroup1.WithHierarchy(v1Hierarchy), allowMissing)
	if err != nil {
		return nil, fmt.Errorf("create cgroup %s (v1): %w", group, err)
	}
	files, err := FilesOf(group)
	if err != nil {
		return nil, err
	}
	return &Cgroup{Group: group, v1: cg, Stats: files}, nil
}

// Load re-opens an OSlet's cgroup from the host side, so that a later boot
// can clean up after a crash.
func Load(group string) (*Cgroup, error) {
	if Unified() {
		path, err := v2Path(group)
		if err != nil {
			return nil, err
		}
		m, err := cgroup2.Load(path)
		if err != nil {
			return nil, fmt.Errorf("load cgroup %s: %w", path, err)
		}
		files, err := FilesOf(group)
		if err != nil {
			return nil, err
		}
		return &Cgroup{Group: path, v2: m, Stats: files}, nil
	}
	cg, err := cgroup1.Load(cgroup1.NestedPath(group), cgroup1.WithHierarchy(v1Hierarchy), allowMissing)
	if err != nil {
		return nil, fmt.Errorf("load cgroup %s: %w", group, err)
	}
	files, err := FilesOf(group)
	if err != nil {
		return nil, err
	}
	return &Cgroup{Group: group, v1: cg, Stats: files}, nil
}

// allowMissing lets a v1 cgroup be made without the devices controller,
// which smpc does not use.
func allowMissing(c *cgroup1.InitConfig) error {
	c.InitCheck = cgroup1.AllowAny
	return nil
}

// v2Path nests group under this process's own cgroup, as v1's NestedPath does.
func v2Path(group string) (string, error) {
	p, err := cgroup2.NestedGroupPath(group)
	if err != nil {
		return "", fmt.Errorf("find own cgroup: %w", err)
	}
	return p, nil
}

// AddProc moves process pid (a host PID) into the cgroup.
func (c *Cgroup) AddProc(pid int) error {
	var err error
	if c.v2 != nil {
		err = c.v2.AddProc(uint64(pid))
	} else {
		err = c.v1.AddProc(uint64(pid))
	}
	if err != nil {
		return fmt.Errorf("move pid %d into cgroup %s: %w", pid, c.Group, err)
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

// Kill ends every process in the cgroup at once: cgroup.kill on v2; on v1
// the cgroup is frozen first, so that nothing in it forks while it is
// killed, then thawed so that the kills land. before, if not nil, sees each
// process's host PID while the process still exists.
func (c *Cgroup) Kill(before func(hostPID int)) error {
	if c.v2 != nil {
		if before != nil {
			if procs, err := c.v2.Procs(false); err == nil {
				for _, p := range procs {
					before(int(p))
				}
			}
		}
		if err := c.v2.Kill(); err != nil {
			return fmt.Errorf("kill cgroup %s: %w", c.Group, err)
		}
		return nil
	}
	frozen := c.v1.Freeze() == nil
	procs, err := c.v1.Processes(cgroup1.Pids, true)
	for _, p := range procs {
		if before != nil {
			before(p.Pid)
		}
		unix.Kill(p.Pid, unix.SIGKILL)
	}
	if frozen {
		c.v1.Thaw()
	}
	if err != nil {
		return fmt.Errorf("kill cgroup %s: %w", c.Group, err)
	}
	return nil
}

// Destroy kills whatever is left in the cgroup and removes it.
func (c *Cgroup) Destroy() error {
	if c.v2 != nil {
		c.v2.Kill()
		if err := c.v2.Delete(); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove cgroup %s: %w", c.Group, err)
		}
		return nil
	}
	if procs, err := c.v1.Processes(cgroup1.Pids, true); err == nil {
		for _, p := range procs {
			if proc, err := os.FindProcess(p.Pid); err == nil {
				proc.Kill()
			}
		}
	}
	if err := c.v1.Delete(); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove cgroup %s: %w", c.Group, err)
	}
	return nil
}

// RemoveParents removes the now-empty groups above an OSlet's cgroup, up to
// and including top (e.g. "smpc"), where no other cluster still uses them.
func RemoveParents(group, top string) {
	var roots []string
	if Unified() {
		if p, err := v2Path(""); err == nil {
			roots = []string{filepath.Join("/sys/fs/cgroup", p)}
		}
	} else if paths, err := cgroup1.ParseCgroupFile("/proc/self/cgroup"); err == nil {
		for _, s := range v1Names {
			if p, ok := paths[s]; ok {
				roots = append(roots, filepath.Join("/sys/fs/cgroup", s, p))
			}
		}
	}
	for _, root := range roots {
		for dir := filepath.Dir(group); dir != "." && dir != "/"; dir = filepath.Dir(dir) {
			os.Remove(filepath.Join(root, dir)) // fails harmlessly while in use
			if dir == top {
				break
			}
		}
	}
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
