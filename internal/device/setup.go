package device

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// SetupDev gives OSlet k its own /dev: a tmpfs with the pseudo-devices, k's
// own devices, the host's pseudo-terminals (so that terminals handed to
// processes keep working) and the shared /dev/shm (shm, if not empty). It is
// built aside, under scratch, and moved onto /dev whole, so that no process
// ever sees half of it.
func SetupDev(k int, devs []Device, scratch, shm string) error {
	stage := filepath.Join(scratch, ".smpc-dev")
	if err := os.MkdirAll(stage, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("smpc-dev", stage, "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=755"); err != nil {
		return fmt.Errorf("mount tmpfs for /dev: %w", err)
	}
	for _, d := range Pseudo {
		if err := mknod(filepath.Join(stage, d.Name), d); err != nil {
			return err
		}
	}
	for _, d := range devs {
		if d.OSlet == k {
			if err := mknod(filepath.Join(stage, d.Name), d); err != nil {
				return err
			}
		}
	}
	for _, l := range [][2]string{{"/proc/self/fd", "fd"}, {"/proc/self/fd/0", "stdin"}, {"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"}} {
		if err := os.Symlink(l[0], filepath.Join(stage, l[1])); err != nil {
			return err
		}
	}
	binds := [][2]string{{"/dev/pts", "pts"}}
	if shm != "" {
		binds = append(binds, [2]string{shm, "shm"})
	}
	for _, b := range binds {
		target := filepath.Join(stage, b[1])
		if err := os.Mkdir(target, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(b[0], target, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s on /dev/%s: %w", b[0], b[1], err)
		}
	}
	if err := unix.Mount(stage, "/dev", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move the new /dev in place: %w", err)
	}
	return os.Remove(stage)
}
