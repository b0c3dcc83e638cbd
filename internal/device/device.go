// Package device is the seed's /rdev: each device belongs to one OSlet, and
// the others reach it through that OSlet.
//
// A plan gives block and character devices to OSlets; the host's block
// devices that no OSlet is given stay with OSlet 1. Inside an OSlet, /dev
// holds its own devices and the usual pseudo-devices, and its devices
// cgroup lets it open those alone. Every OSlet's devices appear in every
// OSlet as /rdev/K/NAME, files of a filesystem the OSlet's init serves
// (FUSE). Opening one makes the init ask OSlet K, over the fabric, to open
// its device with the caller's credentials; K checks them against the
// device's owner and mode and hands the open descriptor over, and the init
// then serves the caller's reads and writes from it. Unmodified programs
// (dd, cat, mkfs) work on /rdev. A process started with direct device opens
// gets the owner's descriptor itself from its open (direct.go), and a
// program that links the smpc package can take it with Client.OpenDevice:
// both use the device at native speed.
package device

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc/internal/fabric"
	"github.com/smpc-cluster/smpc/internal/plan"
	"github.com/smpc-cluster/smpc/internal/topology"
	"github.com/smpc-cluster/smpc/internal/trap"
	"github.com/smpc-cluster/smpc/internal/vproc"
)

// Dir is where every OSlet sees the cluster's devices: Dir/K/NAME.
const Dir = trap.RdevDir

// Device is one device node and its owner.
type Device = fabric.Device

// Lookup stats /dev/NAME as this process sees it; Inventory adds the size.
func Lookup(name string) (Device, error) {
	if name == "" || strings.Contains(name, "/") || name == "." || name == ".." {
		return Device{}, fmt.Errorf("device %q: %w", name, syscall.EINVAL)
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join("/dev", name), &st); err != nil {
		return Device{}, fmt.Errorf("device %s: %w", name, err)
	}
	d := Device{Name: name, Major: unix.Major(st.Rdev), Minor: unix.Minor(st.Rdev), Mode: st.Mode & 0o7777, UID: st.Uid, GID: st.Gid}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFBLK:
		d.Type = "block"
	case unix.S_IFCHR:
		d.Type = "char"
	default:
		return Device{}, fmt.Errorf("device %s: not a block or character device: %w", name, syscall.ENODEV)
	}
	return d, nil
}

// Inventory lists the cluster's devices by owner: the block and character
// devices the plan names, and the host's block devices (hostBlock) that no
// OSlet is given, which stay with the first OSlet. Network interfaces are
// not devices here: they move into their OSlet's network stack.
func Inventory(p *plan.Plan, hostBlock []string) ([]Device, error) {
	var devs []Device
	named := map[string]bool{}
	for _, o := range p.OSlets {
		for _, name := range o.Devices {
			if topology.IsInterface(name) {
				continue
			}
			d, err := Lookup(name)
			if err != nil {
				return nil, fmt.Errorf("oslet %d: %w", o.Index, err)
			}
			d.OSlet = o.Index
			devs = append(devs, d)
			named[name] = true
		}
	}
	for _, name := range hostBlock {
		if named[name] {
			continue
		}
		if d, err := Lookup(name); err == nil {
			d.OSlet = p.OSlets[0].Index
			devs = append(devs, d)
		}
	}
	for i := range devs {
		if devs[i].Type == "block" {
			devs[i].Size = blockSize(devs[i].Name)
		}
	}
	slices.SortFunc(devs, func(a, b Device) int {
		if a.OSlet != b.OSlet {
			return a.OSlet - b.OSlet
		}
		return strings.Compare(a.Name, b.Name)
	})
	return devs, nil
}

// Owned returns OSlet k's devices, with owner, mode and size as they are
// now (a chmod in k's /dev shows, and so does a resize), as this process,
// running on k, sees them.
func Owned(devs []Device, k int) []Device {
	var own []Device
	for _, d := range devs {
		if d.OSlet != k {
			continue
		}
		if live, err := Lookup(d.Name); err == nil {
			d.Mode, d.UID, d.GID = live.Mode, live.UID, live.GID
		}
		if size := blockSize(d.Name); d.Type == "block" && size > 0 {
			d.Size = size
		}
		own = append(own, d)
	}
	return own
}

// Pseudo are the devices every OSlet has in its /dev, shared by all.
var Pseudo = []Device{
	{Name: "null", Type: "char", Major: 1, Minor: 3, Mode: 0o666},
	{Name: "zero", Type: "char", Major: 1, Minor: 5, Mode: 0o666},
	{Name: "full", Type: "char", Major: 1, Minor: 7, Mode: 0o666},
	{Name: "random", Type: "char", Major: 1, Minor: 8, Mode: 0o666},
	{Name: "urandom", Type: "char", Major: 1, Minor: 9, Mode: 0o666},
	{Name: "tty", Type: "char", Major: 5, Minor: 0, Mode: 0o666},
	{Name: "ptmx", Type: "char", Major: 5, Minor: 2, Mode: 0o666},
}

// ptsMajors are the majors of Unix98 pseudo-terminal slaves (/dev/pts/N).
var ptsMajors = []int64{136, 137, 138, 139, 140, 141, 142, 143}

// fuseMajor, fuseMinor are /dev/fuse, which the init opens once to serve
// /rdev, before it replaces /dev with one that has no node for it.
const fuseMajor, fuseMinor = 10, 229

// CgroupRules are OSlet k's devices cgroup: nothing but the pseudo-devices,
// the pseudo-terminals, and its own devices, for which alone it may make
// nodes. Another OSlet's device it reaches only through /rdev, by a
// descriptor its owner opened.
func CgroupRules(k int, devs []Device) []specs.LinuxDeviceCgroup {
	rule := func(typ string, major, minor int64, access string) specs.LinuxDeviceCgroup {
		return specs.LinuxDeviceCgroup{Allow: true, Type: typ, Major: &major, Minor: &minor, Access: access}
	}
	// "All" spelled out (type a, major and minor -1): the runtime spec
	// reads what is unset as all, but containerd's v2 device program
	// refuses an empty type and needs the numbers.
	all := int64(-1)
	rules := []specs.LinuxDeviceCgroup{{Allow: false, Type: "a", Major: &all, Minor: &all, Access: "rwm"}}
	for _, p := range Pseudo {
		rules = append(rules, rule("c", int64(p.Major), int64(p.Minor), "rwm"))
	}
	for _, m := range ptsMajors {
		rules = append(rules, rule("c", m, -1, "rw"))
	}
	rules = append(rules, rule("c", fuseMajor, fuseMinor, "rw"))
	for _, d := range devs {
		if d.OSlet == k {
			rules = append(rules, rule(d.Type[:1], int64(d.Major), int64(d.Minor), "rwm"))
		}
	}
	return rules
}

// Cred is who opens a device.
type Cred = vproc.Cred

// The accesses check weighs, as the mode bits name them.
const (
	read  = 4
	write = 2
)

// check says whether cred may open device name, which must be OSlet k's
// (this process runs on k), for access want: by the node's owner and mode
// as k has them now, as open(2) would; root always may.
func check(devs []Device, k int, name string, cred Cred, want uint32) error {
	i := slices.IndexFunc(devs, func(d Device) bool { return d.OSlet == k && d.Name == name })
	if i < 0 {
		return fmt.Errorf("oslet %d has no device %s: %w", k, name, syscall.ENODEV)
	}
	d, err := Lookup(name)
	if err != nil {
		return err
	}
	if d.Major != devs[i].Major || d.Minor != devs[i].Minor {
		return fmt.Errorf("device %s changed since boot: %w", name, syscall.ENODEV)
	}
	if !allows(d, cred, want) {
		return fmt.Errorf("device %s: %w", name, syscall.EACCES)
	}
	return nil
}

// allows applies the device node's owner and mode, as open(2) would.
func allows(d Device, c Cred, want uint32) bool { return c.Allows(d.UID, d.GID, d.Mode, want) }

// OpenFlags are the open(2) flags besides the access mode that the owner
// opens a device with for its caller: an exclusive claim of a block device
// (mkfs takes one) and those of how its I/O is done.
const OpenFlags = unix.O_EXCL | unix.O_SYNC | unix.O_DSYNC | unix.O_DIRECT | unix.O_NONBLOCK

// Open opens OSlet k's own device name for cred, if cred may open it with
// the access mode of flags; of the rest of flags it keeps OpenFlags.
func Open(devs []Device, k int, name string, cred Cred, flags int) (*os.File, error) {
	want := uint32(read)
	switch flags & unix.O_ACCMODE {
	case unix.O_WRONLY:
		want = write
	case unix.O_RDWR:
		want = read | write
	}
	flags &= unix.O_ACCMODE | OpenFlags
	if err := check(devs, k, name, cred, want); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join("/dev", name), flags|unix.O_NOFOLLOW|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("device %s: %w", name, err)
	}
	return f, nil
}

// mknod makes a node for d at path with d's owner and mode.
func mknod(path string, d Device) error {
	mode := d.Mode
	if d.Type == "block" {
		mode |= unix.S_IFBLK
	} else {
		mode |= unix.S_IFCHR
	}
	if err := unix.Mknod(path, mode, int(unix.Mkdev(d.Major, d.Minor))); err != nil {
		return fmt.Errorf("mknod %s: %w", path, err)
	}
	if err := unix.Chown(path, int(d.UID), int(d.GID)); err != nil {
		return fmt.Errorf("chown %s: %w", path, err)
	}
	if err := unix.Chmod(path, d.Mode); err != nil {
		return fmt.Errorf("chmod %s: %w", path, err)
	}
	return nil
}

// blockSize reads a block device's size from sysfs (in 512-byte sectors,
// whatever the device's own block size), which needs no open of the device:
// opening has effects on some, and the host may not be allowed to.
func blockSize(name string) int64 {
	b, err := os.ReadFile(filepath.Join("/sys/class/block", name, "size"))
	if err != nil {
		return 0
	}
	sectors, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return sectors * 512
}
