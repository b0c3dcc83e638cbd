package topology

import (
	"os"
	"path/filepath"
	"testing"
)

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestReadFakeSysfs(t *testing.T) {
	sys := t.TempDir()
	write(t, sys+"/devices/system/cpu/online", "0-3\n")
	for cpu, sib := range map[int]string{0: "0,2", 1: "1,3", 2: "0,2", 3: "1,3"} {
		d := filepath.Join(sys, "devices/system/cpu", "cpu"+string(rune('0'+cpu)))
		write(t, d+"/topology/thread_siblings_list", sib+"\n")
		write(t, d+"/cache/index3/level", "3\n")
		write(t, d+"/cache/index3/shared_cpu_list", "0-3\n")
	}
	write(t, sys+"/devices/system/node/node0/cpulist", "0-3\n")
	write(t, sys+"/devices/system/node/node0/meminfo", "Node 0 MemTotal:       1024 kB\n")
	write(t, sys+"/class/net/lo/x", "")
	write(t, sys+"/class/net/eth0/x", "")
	write(t, sys+"/block/vda/x", "")
	write(t, sys+"/block/loop0/x", "")

	m, err := Read(sys, "/nonexistent")
	if err != nil {
		t.Fatal(err)
	}
	if len(m.CPUs) != 4 || m.CPUs[2].Core != 0 || m.CPUs[3].Core != 1 || m.CPUs[1].L3 != 0 {
		t.Fatalf("cpus = %+v", m.CPUs)
	}
	if m.Memory != 1<<20 || len(m.Nodes) != 1 {
		t.Fatalf("memory = %d, nodes = %+v", m.Memory, m.Nodes)
	}
	if len(m.Net) != 1 || m.Net[0] != "eth0" || len(m.Block) != 1 || m.Block[0] != "vda" {
		t.Fatalf("devices: net %v block %v", m.Net, m.Block)
	}
}

func TestDetectThisMachine(t *testing.T) {
	m, err := Detect()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.CPUs) == 0 || m.Memory == 0 {
		t.Fatalf("detected nothing: %+v", m)
	}
}

// A machine whose NUMA nodes count less than MemTotal (a VM given memory
// after boot) has MemTotal, shared among its nodes in their proportions.
func TestNodesCountLessThanMemTotal(t *testing.T) {
	sys := t.TempDir()
	write(t, sys+"/devices/system/cpu/online", "0-3\n")
	write(t, sys+"/devices/system/node/node0/cpulist", "0-1\n")
	write(t, sys+"/devices/system/node/node0/meminfo", "Node 0 MemTotal:       1048576 kB\n")
	write(t, sys+"/devices/system/node/node1/cpulist", "2-3\n")
	write(t, sys+"/devices/system/node/node1/meminfo", "Node 1 MemTotal:       3145728 kB\n")
	meminfo := filepath.Join(t.TempDir(), "meminfo")
	write(t, meminfo, "MemTotal:       16777216 kB\nMemFree:        1 kB\n")
	m, err := Read(sys, meminfo)
	if err != nil {
		t.Fatal(err)
	}
	if m.Memory != 16<<30 || m.Nodes[0].Memory != 4<<30 || m.Nodes[1].Memory != 12<<30 {
		t.Fatalf("memory %d, nodes %+v; want 16 GiB as 4 and 12", m.Memory, m.Nodes)
	}
	// Nodes that agree with MemTotal, within the kernel's own reservations,
	// are taken as they say.
	write(t, meminfo, "MemTotal:       4100000 kB\n")
	if m, err = Read(sys, meminfo); err != nil || m.Memory != 4<<30 {
		t.Fatalf("memory %d (%v); want the nodes' 4 GiB", m.Memory, err)
	}
}
