// Package topology reads the machine from sysfs: CPUs with their cores, SMT
// siblings and shared L3 caches, NUMA nodes with their memory, network
// interfaces and block devices. It is the seed's early-boot probe, done once
// by a central program before the OSlets are partitioned.
package topology

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// CPU is one logical CPU.
type CPU struct {
	ID   int `json:"id"`
	Core int `json:"core"` // lowest-numbered SMT sibling: CPUs with the same Core share a core
	Node int `json:"node"` // NUMA node
	L3   int `json:"l3"`   // lowest-numbered CPU sharing this CPU's last-level cache
}

// Node is one NUMA memory node.
type Node struct {
	ID     int   `json:"id"`
	CPUs   []int `json:"cpus"`
	Memory int64 `json:"memory"` // bytes
}

// Machine is what the probe found.
type Machine struct {
	CPUs   []CPU    `json:"cpus"`
	Nodes  []Node   `json:"nodes"`
	Net    []string `json:"net"`   // network interfaces, loopback excluded
	Block  []string `json:"block"` // block devices, loop and ram disks excluded
	Memory int64    `json:"memory"`
}

// CPU returns the CPU numbered id.
func (m *Machine) CPU(id int) (CPU, bool) {
	i := slices.IndexFunc(m.CPUs, func(c CPU) bool { return c.ID == id })
	if i < 0 {
		return CPU{}, false
	}
	return m.CPUs[i], true
}

// Node returns the node numbered id.
func (m *Machine) Node(id int) (Node, bool) {
	i := slices.IndexFunc(m.Nodes, func(n Node) bool { return n.ID == id })
	if i < 0 {
		return Node{}, false
	}
	return m.Nodes[i], true
}

// HasDevice reports whether name is one of the machine's devices: a
// network interface or block device it lists, or any block or character
// device in /dev (loop devices and terminals, which the listing leaves out).
func (m *Machine) HasDevice(name string) bool {
	if slices.Contains(m.Net, name) || slices.Contains(m.Block, name) {
		return true
	}
	if name == "" || strings.Contains(name, "/") {
		return false
	}
	fi, err := os.Stat(filepath.Join("/dev", name))
	return err == nil && fi.Mode()&os.ModeDevice != 0
}

// IsInterface says whether name is a network interface of this host, in
// this process's network namespace.
func IsInterface(name string) bool {
	if name == "" || strings.Contains(name, "/") {
		return false
	}
	_, err := os.Stat(filepath.Join("/sys/class/net", name))
	return err == nil
}

// Detect probes this machine: Read("/sys") limited to the CPUs this process
// may run on, since those are the only ones it can hand to OSlets.
func Detect() (*Machine, error) {
	m, err := Read("/sys", "/proc/meminfo")
	if err != nil {
		return nil, err
	}
	var mask unix.CPUSet
	if err := unix.SchedGetaffinity(0, &mask); err == nil {
		m.CPUs = slices.DeleteFunc(m.CPUs, func(c CPU) bool { return !mask.IsSet(c.ID) })
		for i := range m.Nodes {
			m.Nodes[i].CPUs = slices.DeleteFunc(m.Nodes[i].CPUs, func(c int) bool { return !mask.IsSet(c) })
		}
	}
	return m, nil
}

// Read probes a sysfs tree rooted at sys (tests pass a fake tree); meminfo is
// used for the memory size when the kernel has no NUMA node directories.
func Read(sys, meminfo string) (*Machine, error) {
	cpuDir := filepath.Join(sys, "devices/system/cpu")
	online, err := readList(filepath.Join(cpuDir, "online"))
	if err != nil {
		return nil, fmt.Errorf("read online CPUs: %w", err)
	}
	m := &Machine{}
	nodeOf := map[int]int{}
	nodeDirs, _ := filepath.Glob(filepath.Join(sys, "devices/system/node/node[0-9]*"))
	for _, dir := range nodeDirs {
		id, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(dir), "node"))
		if err != nil {
			continue
		}
		cpus, err := readList(filepath.Join(dir, "cpulist"))
		if err != nil {
			return nil, fmt.Errorf("read node %d CPUs: %w", id, err)
		}
		mem, err := nodeMemory(filepath.Join(dir, "meminfo"))
		if err != nil {
			return nil, fmt.Errorf("read node %d memory: %w", id, err)
		}
		cpus = slices.DeleteFunc(cpus, func(c int) bool { return !slices.Contains(online, c) })
		m.Nodes = append(m.Nodes, Node{ID: id, CPUs: cpus, Memory: mem})
		for _, c := range cpus {
			nodeOf[c] = id
		}
	}
	if len(m.Nodes) == 0 {
		mem, err := nodeMemory(meminfo)
		if err != nil {
			return nil, fmt.Errorf("read memory size: %w", err)
		}
		m.Nodes = []Node{{ID: 0, CPUs: online, Memory: mem}}
	}
	slices.SortFunc(m.Nodes, func(a, b Node) int { return a.ID - b.ID })
	for _, n := range m.Nodes {
		m.Memory += n.Memory
	}
	// Some machines' nodes count less than the machine has (a VM whose
	// memory was added after boot: here one node said 4.6 GiB of 23.5).
	// MemTotal is the truth; the nodes keep their proportions of it.
	if total, err := nodeMemory(meminfo); err == nil && len(nodeDirs) > 0 && m.Memory > 0 && differ(m.Memory, total) {
		scaled := int64(0)
		for i := range m.Nodes {
			m.Nodes[i].Memory = int64(float64(m.Nodes[i].Memory) * float64(total) / float64(m.Memory))
			scaled += m.Nodes[i].Memory
		}
		m.Nodes[len(m.Nodes)-1].Memory += total - scaled // rounding
		m.Memory = total
	}
	for _, id := range online {
		dir := filepath.Join(cpuDir, fmt.Sprintf("cpu%d", id))
		c := CPU{ID: id, Core: id, Node: nodeOf[id], L3: id}
		if sib, err := readList(filepath.Join(dir, "topology/thread_siblings_list")); err == nil && len(sib) > 0 {
			c.Core = sib[0]
		}
		caches, _ := filepath.Glob(filepath.Join(dir, "cache/index[0-9]*"))
		for _, idx := range caches {
			if lvl, _ := os.ReadFile(filepath.Join(idx, "level")); strings.TrimSpace(string(lvl)) == "3" {
				if shared, err := readList(filepath.Join(idx, "shared_cpu_list")); err == nil && len(shared) > 0 {
					c.L3 = shared[0]
				}
			}
		}
		m.CPUs = append(m.CPUs, c)
	}
	m.Net = listDir(filepath.Join(sys, "class/net"), func(n string) bool { return n != "lo" })
	m.Block = listDir(filepath.Join(sys, "block"), func(n string) bool {
		return !strings.HasPrefix(n, "loop") && !strings.HasPrefix(n, "ram") && !strings.HasPrefix(n, "zram")
	})
	return m, nil
}

func listDir(dir string, keep func(string) bool) []string {
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		if keep(e.Name()) {
			names = append(names, e.Name())
		}
	}
	return names
}

// readList reads a kernel CPU list file ("0-3,8").
func readList(path string) ([]int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []int
	for _, part := range strings.Split(strings.TrimSpace(string(b)), ",") {
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return nil, fmt.Errorf("%s: bad list %q", path, b)
		}
		z := a
		if isRange {
			if z, err = strconv.Atoi(hi); err != nil {
				return nil, fmt.Errorf("%s: bad list %q", path, b)
			}
		}
		for i := a; i <= z; i++ {
			out = append(out, i)
		}
	}
	return out, nil
}

// differ says whether the nodes' sum and MemTotal disagree by more than
// the kernel's own reservations explain (about 2%).
func differ(nodes, total int64) bool {
	d := nodes - total
	if d < 0 {
		d = -d
	}
	return d > total/20
}

// nodeMemory reads MemTotal from a node's meminfo ("Node 0 MemTotal: N kB")
// or from /proc/meminfo ("MemTotal: N kB").
func nodeMemory(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		for i, fld := range fields {
			if fld == "MemTotal:" && i+1 < len(fields) {
				kb, err := strconv.ParseInt(fields[i+1], 10, 64)
				if err != nil {
					return 0, fmt.Errorf("%s: bad MemTotal %q", path, fields[i+1])
				}
				return kb * 1024, nil
			}
		}
	}
	return 0, fmt.Errorf("%s: no MemTotal", path)
}
