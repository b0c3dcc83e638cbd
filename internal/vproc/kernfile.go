package vproc

import (
	"io/fs"

	"golang.org/x/sys/unix"
)

// ReadKernelFile reads a file that the kernel makes up as it is read (one of
// /proc or of a cgroup's), whole, in three system calls. os.ReadFile takes
// nine for one of these: /proc's and cgroupfs's files can be polled, so
// os.File puts each in Go's poller and takes it out again. The init reads
// such files while a trapped exec waits for its placement and while it
// counts the load, where each system call shows (some 5 µs on the
// development VM). Errors are os.ReadFile's.
func ReadKernelFile(path string) ([]byte, error) {
	fd, err := openRetry(path, unix.O_RDONLY|unix.O_CLOEXEC)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	// Most are a line or a few hundred bytes; /proc/PID/status is about
	// 1.4 KiB.
	buf := make([]byte, 0, 2048)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := unix.Read(fd, buf[len(buf):cap(buf)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "read", Path: path, Err: err}
		}
		if n == 0 {
			return buf, nil
		}
		buf = buf[:len(buf)+n]
	}
}

func openRetry(path string, flags int) (int, error) {
	for {
		fd, err := unix.Open(path, flags, 0)
		if err != unix.EINTR {
			return fd, err
		}
	}
}
