package plan

import (
	"strings"
	"testing"

	"github.com/smpc-cluster/smpc/internal/topology"
)

// machine builds a fake machine: nodes × l3PerNode × coresPerL3 cores of smt
// threads each, siblings numbered as Linux does (cpu, cpu+ncores).
func machine(nodes, l3PerNode, coresPerL3, smt int) *topology.Machine {
	m := &topology.Machine{Net: []string{"eth0"}, Block: []string{"vda"}}
	ncores := nodes * l3PerNode * coresPerL3
	for n := 0; n < nodes; n++ {
		node := topology.Node{ID: n, Memory: 8 << 30}
		for l := 0; l < l3PerNode; l++ {
			first := (n*l3PerNode + l) * coresPerL3
			for c := 0; c < coresPerL3; c++ {
				for s := 0; s < smt; s++ {
					id := first + c + s*ncores
					m.CPUs = append(m.CPUs, topology.CPU{ID: id, Core: first + c, Node: n, L3: first})
					node.CPUs = append(node.CPUs, id)
				}
			}
		}
		m.Nodes = append(m.Nodes, node)
		m.Memory += node.Memory
	}
	return m
}

func sizes(p *Plan) []int {
	var s []int
	for _, o := range p.OSlets {
		s = append(s, len(o.CPUs))
	}
	return s
}

func TestMake(t *testing.T) {
	tests := []struct {
		name string
		m    *topology.Machine
		opt  Options
		want []int
	}{
		{"2 cpus", machine(1, 1, 2, 1), Options{}, []int{1, 1}},
		{"1 cpu", machine(1, 1, 1, 1), Options{}, []int{1}},
		{"16 cpus, two L3s", machine(1, 2, 8, 1), Options{}, []int{8, 8}},
		{"16 cpus, one L3", machine(1, 1, 16, 1), Options{}, []int{8, 8}},
		{"2 nodes, smt", machine(2, 1, 6, 2), Options{}, []int{6, 6, 6, 6}},
		{"small L3s merged", machine(1, 4, 2, 1), Options{}, []int{4, 4}},
		{"--oslets 4", machine(1, 1, 16, 1), Options{OSlets: 4}, []int{4, 4, 4, 4}},
		{"--oslets 3 of 16", machine(1, 1, 16, 1), Options{OSlets: 3}, []int{5, 5, 6}},
		{"--oslets 8", machine(1, 2, 8, 1), Options{OSlets: 8}, []int{2, 2, 2, 2, 2, 2, 2, 2}},
		{"--cpus-per-oslet 4, smt", machine(1, 1, 8, 2), Options{CPUsPerOSlet: 4}, []int{4, 4, 4, 4}},
		{"--oslets 1 --cpus-per-oslet 1", machine(1, 1, 2, 1), Options{OSlets: 1, CPUsPerOSlet: 1}, []int{1}},
		{"--oslets 4 --cpus-per-oslet 2", machine(1, 1, 16, 1), Options{OSlets: 4, CPUsPerOSlet: 2}, []int{2, 2, 2, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Make(tt.m, tt.opt)
			if err != nil {
				t.Fatal(err)
			}
			if err := p.Validate(tt.m); err != nil {
				t.Fatalf("generated plan is invalid: %v", err)
			}
			if got := sizes(p); !equal(got, tt.want) {
				t.Fatalf("sizes = %v, want %v", got, tt.want)
			}
			// SMT siblings always land together.
			tab := NewTable(p)
			for _, c := range tt.m.CPUs {
				if tab.OwnerOfCPU(c.ID) != tab.OwnerOfCPU(c.Core) {
					t.Errorf("cpu %d and its sibling %d are split", c.ID, c.Core)
				}
			}
			if p.OSlets[0].Devices != nil || tab.OwnerOfDevice("eth0") != 1 {
				t.Errorf("devices not named should go to OSlet 1")
			}
		})
	}
}

func equal(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestMakeRefuses(t *testing.T) {
	if _, err := Make(machine(1, 1, 2, 1), Options{OSlets: 3}); err == nil || !strings.Contains(err.Error(), "cannot make 3") {
		t.Fatalf("3 OSlets from 2 cores: %v", err)
	}
	if _, err := Make(machine(1, 1, 2, 1), Options{OSlets: 2, CPUsPerOSlet: 2}); err == nil || !strings.Contains(err.Error(), "cannot make 2 OSlets of 2 CPUs") {
		t.Fatalf("2 OSlets of 2 CPUs from 2 CPUs: %v", err)
	}
}

func TestValidate(t *testing.T) {
	m := machine(1, 1, 4, 1)
	good := func() *Plan {
		p, err := Make(m, Options{OSlets: 2})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name  string
		edit  func(p *Plan)
		fault string
	}{
		{"overlap", func(p *Plan) { p.OSlets[1].CPUs = Set{1, 2} }, "cpu 1 is also given to oslet 1"},
		{"missing cpu", func(p *Plan) { p.OSlets[1].CPUs = Set{9} }, "cpu 9 does not exist"},
		{"missing node", func(p *Plan) { p.OSlets[0].Mems = Set{3} }, "memory node 3 does not exist"},
		{"zero memory", func(p *Plan) { p.OSlets[0].Memory = 0 }, "has no memory"},
		{"too much memory", func(p *Plan) { p.OSlets[0].Memory = 64 << 30 }, "the machine has"},
		{"duplicate index", func(p *Plan) { p.OSlets[1].Index = 1 }, "index 1 appears twice"},
		{"bad index", func(p *Plan) { p.OSlets[1].Index = 0 }, "out of range"},
		{"no cpus", func(p *Plan) { p.OSlets[1].CPUs = nil }, "has no CPUs"},
		{"unknown device", func(p *Plan) { p.OSlets[1].Devices = []string{"sdz"} }, `device "sdz" does not exist`},
		{"device twice", func(p *Plan) { p.OSlets[0].Devices = []string{"eth0"}; p.OSlets[1].Devices = []string{"eth0"} }, `"eth0" is also given to oslet 1`},
		{"bad subnet", func(p *Plan) { p.Subnet = "fd00::/64" }, `not an IPv4 prefix`},
		{"version", func(p *Plan) { p.Version = 9 }, "version 9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := good()
			tt.edit(p)
			err := p.Validate(m)
			if err == nil || !strings.Contains(err.Error(), tt.fault) {
				t.Fatalf("Validate = %v, want %q", err, tt.fault)
			}
		})
	}
}

func TestReadAndSet(t *testing.T) {
	p, err := Read(strings.NewReader(`{"version":1,"oslets":[{"index":1,"cpus":"0-2,5","mems":"0","memory":1073741824,"pids":10}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := p.OSlets[0].CPUs.String(); got != "0-2,5" {
		t.Fatalf("cpus = %q", got)
	}
	if _, err := Read(strings.NewReader(`{"version":1,"oslets":[{"index":1,"cpu":"0"}]}`)); err == nil {
		t.Fatal("unknown field accepted")
	}
	for _, bad := range []string{"x", "3-1", "-1", "0-99999999"} {
		if _, err := ParseSet(bad); err == nil {
			t.Errorf("ParseSet(%q) succeeded", bad)
		}
	}
}

// The shares, their inits' memory and the host's reserve add up to what the
// machine has, whatever way it is split.
func TestMemorySharesAddUp(t *testing.T) {
	for _, tt := range []struct {
		name string
		m    *topology.Machine
		opt  Options
	}{
		{"2 nodes, default split", machine(2, 1, 4, 2), Options{}},
		{"1 node, 2 OSlets", machine(1, 1, 2, 1), Options{OSlets: 2}},
		{"4 nodes, 8 OSlets", machine(4, 2, 4, 1), Options{OSlets: 8}},
	} {
		p, err := Make(tt.m, tt.opt)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		total := HostReserve(tt.m.Memory)
		for _, o := range p.OSlets {
			total += o.Memory + InitMemory
		}
		if slack := tt.m.Memory - total; slack < 0 || slack > int64(len(p.OSlets))<<20 {
			t.Errorf("%s: shares, inits and reserve are %d of %d bytes", tt.name, total, tt.m.Memory)
		}
		if err := p.Validate(tt.m); err != nil {
			t.Errorf("%s: %v", tt.name, err)
		}
	}
}

// A plan's memory nodes are its OSlets' together, each once, in order:
// the nodes a program placed at its exec may use (partition.PlacedLeaf).
func TestPlanMems(t *testing.T) {
	p := &Plan{OSlets: []OSlet{{Mems: Set{2}}, {Mems: Set{0}}, {Mems: Set{0, 2}}, {Mems: Set{1}}}}
	if got := p.Mems().String(); got != "0-2" {
		t.Errorf("Mems = %q, want 0-2", got)
	}
	if got := (&Plan{}).Mems().String(); got != "" {
		t.Errorf("an empty plan's Mems = %q, want none", got)
	}
}
