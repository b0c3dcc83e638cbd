package device

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// MakeTree makes the /rdev tree, Dir/K/NAME for every device of devs,
// under root on the host, where the boot firmware (outside every devices
// cgroup) may make any node. Each OSlet binds it at /rdev.
func MakeTree(root string, devs []Device) error {
	for _, d := range devs {
		dir := filepath.Join(root, strconv.Itoa(d.OSlet))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("rdev: %w", err)
		}
		if err := mknod(filepath.Join(dir, d.Name), d); err != nil {
			return fmt.Errorf("rdev: %w", err)
		}
	}
	return nil
}

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

// BindTree binds the host's /rdev tree at Dir and hides the host's own
// mount of it from the OSlet, so that the only way to the nodes is through
// Dir, where the gate watches.
func BindTree(tree string) error {
	if err := os.MkdirAll(Dir, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(tree, Dir, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s on %s: %w", tree, Dir, err)
	}
	if err := unix.Unmount(tree, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("hide %s: %w", tree, err)
	}
	return nil
}

// Asker decides an open of OSlet k's device name by the process pid (in
// the gate's PID namespace): nil lets the open complete.
type Asker func(k int, name string, pid int) error

// Gate holds every open of a node under Dir with a fanotify permission
// event until ask has decided it. Only opens under Dir pay: the mark is on
// that mount alone, so the rest of the OSlet's opens never see the gate.
func Gate(ask Asker, logf func(msg string, args ...any)) error {
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_CONTENT|unix.FAN_CLOEXEC, unix.O_RDONLY|unix.O_LARGEFILE|unix.O_CLOEXEC)
	if err != nil {
		return fmt.Errorf("fanotify_init: %w", err)
	}
	if err := unix.FanotifyMark(fd, unix.FAN_MARK_ADD|unix.FAN_MARK_MOUNT, unix.FAN_OPEN_PERM, unix.AT_FDCWD, Dir); err != nil {
		unix.Close(fd)
		return fmt.Errorf("fanotify_mark %s: %w", Dir, err)
	}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := unix.Read(fd, buf)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				logf("rdev gate stopped", "err", err)
				return
			}
			for b := buf[:n]; len(b) >= int(unsafe.Sizeof(unix.FanotifyEventMetadata{})); {
				m := (*unix.FanotifyEventMetadata)(unsafe.Pointer(&b[0]))
				if int(m.Event_len) < int(unsafe.Sizeof(*m)) || int(m.Event_len) > len(b) {
					break
				}
				b = b[m.Event_len:]
				if m.Fd < 0 {
					continue // the queue overflowed: nothing to answer
				}
				go answer(fd, m.Fd, int(m.Pid), ask)
			}
		}
	}()
	return nil
}

func answer(gate int, fd int32, pid int, ask Asker) {
	defer unix.Close(int(fd))
	verdict := uint32(unix.FAN_DENY)
	path, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err == nil {
		if k, name, ok := parsePath(path); ok && ask(k, name, pid) == nil {
			verdict = unix.FAN_ALLOW
		}
	}
	resp := make([]byte, 8) // struct fanotify_response
	binary.NativeEndian.PutUint32(resp, uint32(fd))
	binary.NativeEndian.PutUint32(resp[4:], verdict)
	unix.Write(gate, resp)
}

// parsePath splits Dir/K/NAME.
func parsePath(path string) (int, string, bool) {
	rest, ok := strings.CutPrefix(path, Dir+"/")
	if !ok {
		return 0, "", false
	}
	ks, name, ok := strings.Cut(rest, "/")
	k, err := strconv.Atoi(ks)
	if !ok || err != nil || name == "" || strings.Contains(name, "/") {
		return 0, "", false
	}
	return k, name, true
}
