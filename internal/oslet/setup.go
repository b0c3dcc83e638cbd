package oslet

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc/internal/device"
)

// setupNamespaces makes the init's new namespaces into an OSlet. It runs
// before anything else, in this order: mounts go private first so that
// nothing leaks to the host; /proc is mounted fresh so it shows the
// cluster's PID namespace; then the private /tmp (the seed's local /tmp), the shared
// /gtmp (its global one); its own /dev, with its devices and the shared
// /dev/shm (its memory filesystem for shared memory: shm_open works across
// OSlets), after /rdev, where every OSlet's devices are; the cluster's /etc/hosts,
// where smpc-cluster names the cluster's face; then the cluster's hostname
// and loopback. The boot firmware wires eth0 in afterwards, from the host.
func setupNamespaces(cfg *Config, serveRdev func() error) error {
	steps := []struct {
		what string
		do   func() error
	}{
		{"make mounts private", func() error { return unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, "") }},
		{"mount /proc", func() error {
			return unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
		}},
		{"mount private /tmp", func() error {
			return unix.Mount("tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777")
		}},
		{"mount shared /gtmp", func() error { return unix.Mount(cfg.GTmp, "/gtmp", "", unix.MS_BIND, "") }},
		// Before /dev is replaced: the FUSE device is in the host's /dev
		// only, so that no process of the OSlet mounts a filesystem of its
		// own.
		{"serve /rdev", serveRdev},
		{"make its own /dev, with the shared /dev/shm", func() error {
			return device.SetupDev(cfg.Index, cfg.Devices, "/tmp", cfg.Shm)
		}},
		{"mount the cluster's /etc/hosts", func() error {
			if cfg.Hosts == "" {
				return nil
			}
			return unix.Mount(cfg.Hosts, "/etc/hosts", "", unix.MS_BIND, "")
		}},
		{"set hostname", func() error { return unix.Sethostname([]byte(cfg.Cluster)) }},
		{"bring up loopback", loopbackUp},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			return fmt.Errorf("oslet %d: %s: %w", cfg.Index, s.what, err)
		}
	}
	return nil
}

func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// killAll ends every other process of the OSlet: those in its cgroup. The
// init is not PID 1 of a namespace of its own, so kill(-1) would reach the
// whole cluster.
func (i *Init) killAll() {
	for _, pid := range i.cg.PIDs() {
		if pid != int(i.pid) {
			unix.Kill(pid, unix.SIGKILL)
		}
	}
}
