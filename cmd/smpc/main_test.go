package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The command line that every make recipe may run starts about as fast as
// any small Go program only while it links none of the boot firmware: its
// cgroup, netlink, nftables, eBPF and FUSE libraries cost milliseconds of
// start-up on every command (see docs/performance.md).
func TestLinksNoFirmware(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to list the packages smpc links")
	}
	out, err := exec.Command(goTool, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	firmware := []string{
		"github.com/smpc-cluster/smpc/internal/cluster",
		"github.com/smpc-cluster/smpc/internal/oslet",
		"github.com/smpc-cluster/smpc/internal/device",
		"github.com/smpc-cluster/smpc/internal/network",
		"github.com/smpc-cluster/smpc/internal/partition",
		"github.com/smpc-cluster/smpc/internal/shm",
		"github.com/containerd/cgroups",
		"github.com/cilium/ebpf",
		"github.com/google/nftables",
		"github.com/vishvananda/netlink",
		"github.com/hanwen/go-fuse",
		"github.com/godbus/dbus",
		"google.golang.org/protobuf",
	}
	for _, pkg := range strings.Fields(string(out)) {
		for _, f := range firmware {
			if pkg == f || strings.HasPrefix(pkg, f+"/") {
				t.Errorf("smpc links %s", pkg)
			}
		}
	}
}
