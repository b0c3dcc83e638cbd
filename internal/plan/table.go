package plan

// Table is the boot table every OSlet reads: it answers "which OSlet owns
// this?" in constant time, for CPUs, devices and processes.
type Table struct {
	cpuOwner []int          // indexed by CPU number; 0 is no OSlet
	devOwner map[string]int // device name to OSlet
	oslets   []int          // indexes in plan order
}

// NewTable builds the boot table of a validated plan.
func NewTable(p *Plan) *Table {
	t := &Table{devOwner: map[string]int{}}
	for _, o := range p.OSlets {
		t.oslets = append(t.oslets, o.Index)
		for _, c := range o.CPUs {
			for len(t.cpuOwner) <= c {
				t.cpuOwner = append(t.cpuOwner, 0)
			}
			t.cpuOwner[c] = o.Index
		}
		for _, d := range o.Devices {
			t.devOwner[d] = o.Index
		}
	}
	if len(t.oslets) > 0 {
		t.devOwner[""] = t.oslets[0] // devices not named belong to the first OSlet
	}
	return t
}

// OwnerOfCPU returns the OSlet that owns cpu, or 0.
func (t *Table) OwnerOfCPU(cpu int) int {
	if cpu < 0 || cpu >= len(t.cpuOwner) {
		return 0
	}
	return t.cpuOwner[cpu]
}

// OwnerOfDevice returns the OSlet that owns device name: the one the plan
// names, else the first OSlet.
func (t *Table) OwnerOfDevice(name string) int {
	if k, ok := t.devOwner[name]; ok {
		return k
	}
	return t.devOwner[""]
}

// OSlets returns the OSlet indexes in plan order.
func (t *Table) OSlets() []int { return t.oslets }
