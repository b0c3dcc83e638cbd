// Package plan is the partition plan: which CPUs, memory nodes, memory share
// and devices each OSlet owns. It is the table the seed's boot firmware
// prepares before the OSlets start, made from the machine's topology, saved
// as JSON, checked before anything is created, and read by every OSlet as its
// boot table.
package plan

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"

	"github.com/smpc-cluster/smpc/internal/topology"
	"github.com/smpc-cluster/smpc/internal/vproc"
)

// Version is the plan format this package writes and reads.
const Version = 1

// DefaultPids is the default pids limit of an OSlet's cgroup.
const DefaultPids = 8192

// OSlet is one OSlet's partition.
type OSlet struct {
	Index   int      `json:"index"`             // 1..N
	CPUs    Set      `json:"cpus"`              // kernel list, e.g. "0-3"
	Mems    Set      `json:"mems"`              // memory nodes
	Memory  int64    `json:"memory"`            // memory limit in bytes
	Pids    int64    `json:"pids"`              // process limit
	Devices []string `json:"devices,omitempty"` // network interfaces and block devices it owns
}

// DefaultSubnet is the cluster's subnet unless the plan or boot names
// another. It lies in the private range, away from the ranges Docker and
// libvirt take first.
const DefaultSubnet = "10.77.0.0/24"

// Plan partitions the machine into OSlets.
type Plan struct {
	Version int     `json:"version"`
	OSlets  []OSlet `json:"oslets"`
	// Subnet is the cluster's IPv4 subnet (the bridge and one address per
	// OSlet); empty for the default.
	Subnet string `json:"subnet,omitempty"`
	// Subnet6 is the cluster's IPv6 subnet, a unique local prefix (fc00::/7)
	// such as fd12:3456:789a::/64; empty for one of the cluster's own, NoIPv6
	// for none.
	Subnet6 string `json:"subnet6,omitempty"`
}

// NoIPv6 as the plan's Subnet6 leaves IPv6 out of the cluster.
const NoIPv6 = "none"

// ParseSubnet6 reads an IPv6 subnet of a plan: a unique local prefix, as
// the cluster's addresses are not to be routed beyond the machine. Empty
// gives the zero Prefix (the cluster's own default).
func ParseSubnet6(s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is6() || p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("subnet6 %q is not an IPv6 prefix such as fd12:3456:789a::/64 (or %q)", s, NoIPv6)
	}
	if !netip.MustParsePrefix("fc00::/7").Contains(p.Addr()) || p.Bits() < 8 {
		return netip.Prefix{}, fmt.Errorf("subnet6 %s is not within the unique local addresses, fc00::/7 (the cluster's addresses stay on the machine)", p)
	}
	return p.Masked(), nil
}

// Options shape a generated plan. With OSlets alone, the machine is split
// into that many OSlets; with CPUsPerOSlet alone, into OSlets of that many
// CPUs; with both, the cluster takes that many OSlets of that size and leaves
// the rest of the machine outside it (benchmarks that compare cluster sizes
// need this). With neither, Make follows the seed: 4 to 8 CPUs per OSlet,
// aligned to NUMA nodes and L3 domains, and on a machine too small for that,
// two OSlets.
type Options struct {
	OSlets       int
	CPUsPerOSlet int
}

// core is the CPUs of one physical core: never split between OSlets.
type core struct {
	cpus     []int
	node, l3 int
}

// Make partitions machine m.
func Make(m *topology.Machine, opt Options) (*Plan, error) {
	if opt.OSlets < 0 || opt.CPUsPerOSlet < 0 {
		return nil, errors.New("plan: counts must be positive")
	}
	cores := coresOf(m)
	if len(cores) == 0 {
		return nil, errors.New("plan: the machine has no usable CPU")
	}
	var groups [][]core
	switch {
	case opt.OSlets > 0 && opt.CPUsPerOSlet > 0:
		groups = splitBySize(cores, opt.CPUsPerOSlet)
		// splitBySize leaves a smaller run at the end of a node; only full
		// ones count.
		groups = slices.DeleteFunc(groups, func(g []core) bool { return cpuCount(g) < opt.CPUsPerOSlet })
		if len(groups) < opt.OSlets {
			return nil, fmt.Errorf("plan: cannot make %d OSlets of %d CPUs from %d CPUs (an OSlet never splits a core or a node)", opt.OSlets, opt.CPUsPerOSlet, cpuCount(cores))
		}
		groups = groups[:opt.OSlets]
	case opt.OSlets > 0:
		if opt.OSlets > len(cores) {
			return nil, fmt.Errorf("plan: cannot make %d OSlets from %d cores (an OSlet never splits a core)", opt.OSlets, len(cores))
		}
		groups = splitEven(cores, opt.OSlets)
	case opt.CPUsPerOSlet > 0:
		groups = splitBySize(cores, opt.CPUsPerOSlet)
	default:
		groups = splitDefault(cores)
	}
	if len(groups) > vproc.MaxOSlet {
		return nil, fmt.Errorf("plan: %d OSlets is more than the %d a cluster may have", len(groups), vproc.MaxOSlet)
	}
	p := &Plan{Version: Version}
	for i, g := range groups {
		o := OSlet{Index: i + 1, Pids: DefaultPids}
		for _, c := range g {
			o.CPUs = append(o.CPUs, c.cpus...)
			o.Mems = append(o.Mems, c.node)
		}
		slices.Sort(o.CPUs)
		slices.Sort(o.Mems)
		o.Mems = slices.Compact(o.Mems)
		o.Memory = memoryShare(m, o.CPUs)
		p.OSlets = append(p.OSlets, o)
	}
	// Devices not named belong to OSlet 1 without being listed; the host's
	// network interfaces stay the cluster's face unless a plan moves one.
	return p, nil
}

func coresOf(m *topology.Machine) []core {
	byCore := map[int]*core{}
	var order []int
	for _, c := range m.CPUs {
		k, ok := byCore[c.Core]
		if !ok {
			k = &core{node: c.Node, l3: c.L3}
			byCore[c.Core] = k
			order = append(order, c.Core)
		}
		k.cpus = append(k.cpus, c.ID)
	}
	cores := make([]core, 0, len(order))
	for _, id := range order {
		cores = append(cores, *byCore[id])
	}
	// Order by node, then L3 domain, so that contiguous runs stay aligned.
	slices.SortStableFunc(cores, func(a, b core) int {
		if a.node != b.node {
			return a.node - b.node
		}
		if a.l3 != b.l3 {
			return a.l3 - b.l3
		}
		return a.cpus[0] - b.cpus[0]
	})
	return cores
}

func cpuCount(cs []core) int {
	n := 0
	for _, c := range cs {
		n += len(c.cpus)
	}
	return n
}

// splitEven cuts the ordered cores into n runs of near-equal CPU counts.
func splitEven(cores []core, n int) [][]core {
	total := cpuCount(cores)
	groups := make([][]core, 0, n)
	start, seen := 0, 0
	for i := 0; i < n; i++ {
		target := (i + 1) * total / n
		end := start
		// Take at least one core, and leave one for each remaining group.
		for end < len(cores)-(n-1-i) && (end == start || seen+len(cores[end].cpus) <= target) {
			seen += len(cores[end].cpus)
			end++
		}
		if i == n-1 {
			for ; end < len(cores); end++ {
				seen += len(cores[end].cpus)
			}
		}
		groups = append(groups, cores[start:end])
		start = end
	}
	return groups
}

// splitBySize cuts the ordered cores into runs of at least k CPUs, never
// across a NUMA node; the last run of a node may be smaller.
func splitBySize(cores []core, k int) [][]core {
	var groups [][]core
	var cur []core
	for i, c := range cores {
		cur = append(cur, c)
		nodeEnds := i+1 == len(cores) || cores[i+1].node != c.node
		if cpuCount(cur) >= k || nodeEnds {
			groups = append(groups, cur)
			cur = nil
		}
	}
	return groups
}

// splitDefault follows the seed: OSlets of 4 to 8 CPUs, one per L3 domain
// where a domain has that many, small domains of a node merged, large ones
// split evenly. A machine of fewer than 8 CPUs gets two OSlets (one if it has
// a single core).
func splitDefault(cores []core) [][]core {
	if total := cpuCount(cores); total < 8 {
		return splitEven(cores, min(2, len(cores)))
	}
	var domains [][]core
	var cur []core
	for i, c := range cores {
		cur = append(cur, c)
		last := i+1 == len(cores)
		domainEnds := last || cores[i+1].l3 != c.l3 || cores[i+1].node != c.node
		nodeEnds := last || cores[i+1].node != c.node
		if domainEnds && (cpuCount(cur) >= 4 || nodeEnds) {
			domains = append(domains, cur)
			cur = nil
		}
	}
	var groups [][]core
	for _, d := range domains {
		n := (cpuCount(d) + 7) / 8
		groups = append(groups, splitEven(d, min(n, len(d)))...)
	}
	return groups
}

// memoryShare gives an OSlet each node's memory in proportion to the share of
// that node's CPUs it owns, less the host's share (HostReserve) and its
// init's (InitMemory), rounded down to a MiB.
func memoryShare(m *topology.Machine, cpus []int) int64 {
	var share float64
	for _, n := range m.Nodes {
		if len(n.CPUs) == 0 {
			continue
		}
		owned := 0
		for _, c := range n.CPUs {
			if slices.Contains(cpus, c) {
				owned++
			}
		}
		share += float64(n.Memory) * float64(owned) / float64(len(n.CPUs))
	}
	if m.Memory > 0 {
		share *= 1 - float64(HostReserve(m.Memory))/float64(m.Memory)
	}
	return max(int64(share)-InitMemory, 0) &^ (1<<20 - 1)
}

// InitMemory is the memory each OSlet's init has for itself, beside its
// OSlet's share: the OSlet's cgroup holds both (package partition).
const InitMemory int64 = 256 << 20

// HostReserve is the memory a plan leaves the host on a machine of total
// bytes: a twentieth, at least 256 MiB, at most a quarter.
func HostReserve(total int64) int64 {
	return min(max(total/20, 256<<20), total/4)
}

// Validate checks p against machine m and names the first fault it finds.
func (p *Plan) Validate(m *topology.Machine) error {
	if p.Version != Version {
		return fmt.Errorf("plan: version %d is not supported (want %d)", p.Version, Version)
	}
	if len(p.OSlets) == 0 {
		return errors.New("plan: no OSlets")
	}
	cpuOwner := map[int]int{}
	devOwner := map[string]int{}
	seen := map[int]bool{}
	var memory int64
	for _, o := range p.OSlets {
		if o.Index < 1 || o.Index > vproc.MaxOSlet {
			return fmt.Errorf("plan: oslet index %d is out of range 1..%d", o.Index, vproc.MaxOSlet)
		}
		if seen[o.Index] {
			return fmt.Errorf("plan: oslet index %d appears twice", o.Index)
		}
		seen[o.Index] = true
		if len(o.CPUs) == 0 {
			return fmt.Errorf("plan: oslet %d has no CPUs", o.Index)
		}
		for _, c := range o.CPUs {
			if _, ok := m.CPU(c); !ok {
				return fmt.Errorf("plan: oslet %d: cpu %d does not exist on this machine (or this process may not use it)", o.Index, c)
			}
			if other, dup := cpuOwner[c]; dup {
				return fmt.Errorf("plan: oslet %d: cpu %d is also given to oslet %d", o.Index, c, other)
			}
			cpuOwner[c] = o.Index
		}
		if len(o.Mems) == 0 {
			return fmt.Errorf("plan: oslet %d has no memory nodes", o.Index)
		}
		for _, n := range o.Mems {
			if _, ok := m.Node(n); !ok {
				return fmt.Errorf("plan: oslet %d: memory node %d does not exist on this machine", o.Index, n)
			}
		}
		if o.Memory <= 0 {
			return fmt.Errorf("plan: oslet %d has no memory (memory must be a positive number of bytes)", o.Index)
		}
		if o.Memory < 16<<20 {
			return fmt.Errorf("plan: oslet %d: memory %d bytes is too small to run an init (at least 16 MiB)", o.Index, o.Memory)
		}
		memory += o.Memory + InitMemory
		if o.Pids <= 0 {
			return fmt.Errorf("plan: oslet %d: pids limit must be positive", o.Index)
		}
		for _, d := range o.Devices {
			if !m.HasDevice(d) {
				return fmt.Errorf("plan: oslet %d: device %q does not exist on this machine", o.Index, d)
			}
			if other, dup := devOwner[d]; dup {
				return fmt.Errorf("plan: oslet %d: device %q is also given to oslet %d", o.Index, d, other)
			}
			devOwner[d] = o.Index
		}
	}
	if p.Subnet != "" {
		if sub, err := netip.ParsePrefix(p.Subnet); err != nil || !sub.Addr().Is4() {
			return fmt.Errorf("plan: subnet %q is not an IPv4 prefix such as 10.77.0.0/24", p.Subnet)
		}
	}
	if p.Subnet6 != NoIPv6 {
		if _, err := ParseSubnet6(p.Subnet6); err != nil {
			return fmt.Errorf("plan: %w", err)
		}
	}
	if memory > m.Memory {
		return fmt.Errorf("plan: the OSlets ask for %s of memory, their inits' %s each included; the machine has %s", FormatBytes(memory), FormatBytes(InitMemory), FormatBytes(m.Memory))
	}
	return nil
}

// Read decodes a plan from JSON, refusing unknown fields so that a typo in a
// hand-edited plan is not silently ignored.
func Read(r io.Reader) (*Plan, error) {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	var p Plan
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("plan: %w", err)
	}
	return &p, nil
}

// Index returns the OSlet numbered k.
func (p *Plan) Index(k int) (OSlet, bool) {
	i := slices.IndexFunc(p.OSlets, func(o OSlet) bool { return o.Index == k })
	if i < 0 {
		return OSlet{}, false
	}
	return p.OSlets[i], true
}

// FormatBytes writes a byte count the way a person reads it ("3.5G").
func FormatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%c", float64(n)/float64(div), "KMGTPE"[exp])
}

// Mems are the memory nodes of all the plan's OSlets together.
func (p *Plan) Mems() Set {
	var all Set
	for _, o := range p.OSlets {
		all = append(all, o.Mems...)
	}
	slices.Sort(all)
	return slices.Compact(all)
}
