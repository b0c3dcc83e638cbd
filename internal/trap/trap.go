// Package trap has an OSlet's init answer some system calls of the
// processes it starts: seccomp user notifications, installed by a short
// stage in the new process (smpc exec-stage) and answered by the init. It
// serves two of the design's features: direct device opens, which give a
// process the owner's own descriptor of a device of /rdev, and the seed's
// inherited launch attribute, which places each exec under a spreading
// policy on the OSlet the policy picks. The stage is part of the command
// line; the answers are the init's.
package trap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc/internal/fabric"
	"github.com/smpc-cluster/smpc/internal/vproc"
)

// Direct opens give a process the owner's own descriptor when it opens
// /rdev/K/NAME, so that its reads and writes are the kernel's alone, at
// native speed; the FUSE files of /rdev stay the path for every other
// process and every other way of opening.
//
// Only a seccomp filter can make an unmodified program's open return a
// descriptor that another process opened (SECCOMP_IOCTL_NOTIF_ADDFD). The
// filter cannot read the path an open names, so it traps every open and
// openat of the process and its descendants, and the OSlet's init answers
// each one: "carry on" for any path outside /rdev, the owner's descriptor
// for a device. That costs each open a round trip to the init, which is why
// a process asks for it (smpc run --direct-devices) rather than every
// process paying it. openat2 is not trapped: it takes the FUSE path.
//
// The filter is no security boundary and does not try to be one (the
// kernel's own checks and the devices cgroup still decide every open the
// init lets through); it only picks which path an open of /rdev takes.

// ExecStage is the hidden smpc command a process starts through when its
// init must answer some of its system calls: its opens (direct device
// opens), its execs (a spreading launch policy, which places each new
// program on an OSlet), or both. It installs one filter for them (a process
// may hold one seccomp listener), hands its listener to the init over the
// socket whose descriptor it is given, closes that, and executes the
// program.
const ExecStage = "exec-stage"

// What the stage traps, its first argument: TrapOpens, TrapExecs, or both
// joined by a comma.
const (
	TrapOpens = "opens"
	TrapExecs = "execs"
)

// DirectSupported says whether this architecture has direct device opens.
const DirectSupported = auditArch != 0

// ExecTrapped is ExecStage: it runs in the new process before the program.
// args are what to trap, the descriptor of the socket to the init, the
// program's path and then its argv. It returns only on failure, which it
// also reports over the socket so that the init's spawn fails with it.
func ExecTrapped(args []string) error {
	if len(args) < 4 {
		return errors.New("usage: smpc " + ExecStage + " opens|execs|opens,execs FD PATH ARGV0 [ARGS...]")
	}
	fd, err := strconv.Atoi(args[1])
	if err != nil || fd < 3 {
		return fmt.Errorf("%s: bad socket descriptor %q", ExecStage, args[1])
	}
	sock := os.NewFile(uintptr(fd), "listener socket")
	if err := execTrapped(sock, append(args[:1:1], args[2:]...)); err != nil {
		sock.Write([]byte(err.Error()))
		return err
	}
	return nil
}

// execTrapped does the stage's work; args are what to trap, the program's
// path and its argv.
func execTrapped(sock *os.File, args []string) error {
	if !DirectSupported {
		return fmt.Errorf("trapped system calls: not supported on %s", runtime.GOARCH)
	}
	var calls []uint32
	for _, t := range strings.Split(args[0], ",") {
		switch t {
		case TrapOpens:
			calls = append(calls, trappedCalls...)
		case TrapExecs:
			calls = append(calls, execCalls...)
		default:
			return fmt.Errorf("%s: unknown trap %q (opens or execs)", ExecStage, t)
		}
	}
	args = args[1:]
	// The filter binds to this thread, and execve must come from it.
	runtime.LockOSThread()
	prog, err := filterFor(calls)
	if err != nil {
		return err
	}
	listener, err := installFilter(prog)
	if errors.Is(err, unix.EACCES) {
		// Without CAP_SYS_ADMIN the kernel asks for no_new_privs first:
		// set-user-ID programs then do not gain privileges.
		if err = unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err == nil {
			listener, err = installFilter(prog)
		}
	}
	if errors.Is(err, unix.EBUSY) {
		return errors.New("install seccomp filter: the process already has its system calls answered by a listener of another (a process may have one)")
	}
	if err != nil {
		return fmt.Errorf("install seccomp filter: %w", err)
	}
	if err := unix.Sendmsg(int(sock.Fd()), []byte{0}, unix.UnixRights(listener), nil, 0); err != nil {
		return fmt.Errorf("hand over the seccomp listener: %w", err)
	}
	unix.Close(listener)
	sock.Close()
	return unix.Exec(args[0], args[1:], os.Environ())
}

// filter is the seccomp program: calls of this architecture go to the
// listener, everything else runs.
func filter(calls []uint32) []bpf.Instruction {
	prog := []bpf.Instruction{
		bpf.LoadAbsolute{Off: 4, Size: 4}, // seccomp_data.arch
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: auditArch, SkipTrue: uint8(len(calls) + 1)},
		bpf.LoadAbsolute{Off: 0, Size: 4}, // seccomp_data.nr
	}
	for n, nr := range calls {
		prog = append(prog, bpf.JumpIf{Cond: bpf.JumpEqual, Val: nr, SkipTrue: uint8(len(calls) - n)})
	}
	return append(prog,
		bpf.RetConstant{Val: unix.SECCOMP_RET_ALLOW},
		bpf.RetConstant{Val: unix.SECCOMP_RET_USER_NOTIF})
}

// filterFor assembles filter for the kernel.
func filterFor(calls []uint32) ([]unix.SockFilter, error) {
	raw, err := bpf.Assemble(filter(calls))
	if err != nil {
		return nil, fmt.Errorf("assemble seccomp filter: %w", err)
	}
	out := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		out[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	return out, nil
}

// installFilter installs prog on this thread and returns its listener.
//
// Once the init has received a notification, the trapped call waits for
// its answer killable only (WAIT_KILLABLE_RECV, Linux 5.19), not ended by
// any other signal: an interrupted call would be restarted as a new
// notification, and the init would take the restarted exec of the stage
// for one of its program's own (and place it), or place an exec twice. The
// stage's exec is a Go raw system call, which the Go scheduler preempts
// with SIGURG after 10 ms. Older kernels install the filter without it.
func installFilter(prog []unix.SockFilter) (int, error) {
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	flags := uintptr(unix.SECCOMP_FILTER_FLAG_NEW_LISTENER | unix.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV)
	for {
		fd, _, errno := unix.RawSyscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, flags, uintptr(unsafe.Pointer(&fprog)))
		if errno == unix.EINVAL && flags&unix.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV != 0 {
			flags &^= unix.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
			continue
		}
		if errno != 0 {
			return -1, errno
		}
		return int(fd), nil
	}
}

// ListenerPair is the socket pair a spawn hands the stage: the child end
// becomes one of its descriptors, and Receive waits on the other for the
// listener.
func ListenerPair() (parent, child *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "listener socket"), os.NewFile(uintptr(fds[1]), "listener socket"), nil
}

// ReceiveListener waits up to timeout for the stage to hand its seccomp
// listener over, or to say why it could not.
func ReceiveListener(parent *os.File, timeout time.Duration) (*os.File, error) {
	conn, err := net.FileConn(parent)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	uc := conn.(*net.UnixConn)
	uc.SetReadDeadline(time.Now().Add(timeout))
	buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	if errors.Is(err, io.EOF) {
		return nil, errors.New("the process exited before it handed its seccomp listener over")
	}
	if err != nil {
		return nil, fmt.Errorf("wait for the seccomp listener: %w", err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err == nil && len(msgs) == 1 {
		if fds, err := unix.ParseUnixRights(&msgs[0]); err == nil && len(fds) == 1 {
			return os.NewFile(uintptr(fds[0]), "seccomp listener"), nil
		}
	}
	if n == 0 {
		return nil, errors.New("the process exited before it handed its seccomp listener over")
	}
	return nil, errors.New(string(buf[:n]))
}

// pageSize is the unit readString reads in; any size up to the real page
// size keeps each read within one page.
const pageSize = 4096

// The kernel's structures of seccomp_unotify(2), which x/sys/unix does not
// define.
type seccompData struct {
	Nr                 int32
	Arch               uint32
	InstructionPointer uint64
	Args               [6]uint64
}

type seccompNotif struct {
	ID    uint64
	PID   uint32
	Flags uint32
	Data  seccompData
}

type seccompNotifResp struct {
	ID    uint64
	Val   int64
	Error int32
	Flags uint32
}

type seccompNotifAddfd struct {
	ID         uint64
	Flags      uint32
	Srcfd      uint32
	Newfd      uint32
	NewfdFlags uint32
}

// Opener opens OSlet k's device name for a process with its credentials
// and its open(2) flags, as device.Opener does for the FUSE files of /rdev.
type Opener func(ctx context.Context, k int, name string, flags int, cred fabric.Cred) (*os.File, error)

// RdevDir is where every OSlet sees the cluster's devices (device.Dir).
// It is named here, not there, because the command line links this package
// for its exec stage and must not bring device's FUSE server with it.
const RdevDir = "/rdev"

// Supervisor answers the trapped opens and execs of the processes of one
// listener.
type Supervisor struct {
	Devices []fabric.Device
	Open    Opener
	Log     *slog.Logger
	// Timeout bounds one open on the owner.
	Timeout time.Duration
	// Place puts process pid, whose exec was trapped, on the OSlet that
	// policy picks, before the new program runs.
	Place func(pid int, policy string)
}

// Trap says what one listener's processes asked for.
type Trap struct {
	// Stage is the PID of the exec stage that installed the filter: its
	// own exec of the program it starts is not placed again (its spawn
	// placed it).
	Stage int
	// Policy is the spreading launch policy its execs follow; "" when
	// only opens are trapped.
	Policy string
}

// Serve answers listener's notifications until no process uses its filter
// any more, then closes it. It must keep answering while one does: a
// trapped call waits for its answer.
func (s *Supervisor) Serve(listener *os.File, t Trap) {
	defer listener.Close()
	rc, err := listener.SyscallConn()
	if err != nil {
		s.Log.Warn("direct device opens: listener", "err", err)
		return
	}
	// A thread of its own waits in poll(2) rather than Go's netpoller: the
	// trapped process waits for each answer, and the netpoller's wake-up
	// of a goroutine adds to it (an open cost 13 to 17 µs through the
	// netpoller here, 13 on a thread of its own).
	runtime.LockOSThread()
	// Not unlocked: the thread's priority is raised below, and must not go
	// on to serve other goroutines; it ends with this one.
	//
	// A trapped call stands for work the kernel would do in the caller's
	// own time, so its answer must not wait behind the CPU hogs of the
	// init's OSlet (a build's compilers): on an OSlet of one busy CPU, at
	// the default priority, a placement waited for the scheduler's
	// next slice, milliseconds. The answer takes microseconds, so the
	// highest nice value costs the others nothing they would notice.
	if err := unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), -20); err != nil {
		s.Log.Warn("trapped calls: raise the answering thread's priority", "err", err)
	}
	buf := make([]byte, pageSize) // for the paths, one at a time
	rc.Control(func(fd uintptr) {
		// The kernel then switches straight to this thread and back.
		unix.Syscall(unix.SYS_IOCTL, fd, unix.SECCOMP_IOCTL_NOTIF_SET_FLAGS, unix.SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)
	})
	for {
		var n seccompNotif
		var recvErr error
		done := false
		rc.Control(func(fd uintptr) {
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if _, err := unix.Poll(pfd, -1); err != nil {
				recvErr = err
				return
			}
			switch {
			case pfd[0].Revents&unix.POLLIN != 0:
				recvErr = ioctl(fd, unix.SECCOMP_IOCTL_NOTIF_RECV, unsafe.Pointer(&n))
			case pfd[0].Revents&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0:
				done = true // no process uses the filter any more
			}
		})
		if done {
			return
		}
		if recvErr != nil {
			// ENOENT: the process was killed between poll and receive.
			if !errors.Is(recvErr, unix.ENOENT) && !errors.Is(recvErr, unix.EINTR) {
				s.Log.Warn("trapped calls: receive", "err", recvErr)
				return
			}
			continue
		}
		if slices.Contains(execCalls, uint32(n.Data.Nr)) {
			s.answerExec(rc, &n, &t, buf)
			continue
		}
		s.answer(rc, &n, buf)
	}
}

// answer lets an open run on unless it names a device of /rdev, which it
// opens on the owner, in a goroutine of its own: the owner may be slow to
// answer, and the process's other threads may open files meanwhile.
func (s *Supervisor) answer(rc syscall.RawConn, n *seccompNotif, buf []byte) {
	pid := int(n.PID)
	// openat(dirfd, path, flags, mode), or open(path, flags, mode)
	dirfd, pathAddr, flags := int32(n.Data.Args[0]), n.Data.Args[1], int(n.Data.Args[2])
	if n.Data.Nr != int32(unix.SYS_OPENAT) {
		dirfd, pathAddr, flags = unix.AT_FDCWD, n.Data.Args[0], int(n.Data.Args[1])
	}
	path, err := readString(pid, pathAddr, buf)
	k, name, ok := s.target(pid, dirfd, path, flags)
	// The memory read above may have been of another process had this one
	// died and its PID been reused: the notification must still be live.
	if err != nil || !ok || s.notifValid(rc, n.ID) != nil {
		s.reply(rc, seccompNotifResp{ID: n.ID, Flags: unix.SECCOMP_USER_NOTIF_FLAG_CONTINUE})
		return
	}
	go func() {
		cred, err := vproc.FileCredOf(pid)
		if err != nil {
			s.reply(rc, seccompNotifResp{ID: n.ID, Error: -int32(syscall.ESRCH)})
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.Timeout)
		defer cancel()
		f, err := s.Open(ctx, k, name, flags, cred)
		if err != nil {
			s.reply(rc, seccompNotifResp{ID: n.ID, Error: -int32(fabric.ErrnoOf(err))})
			return
		}
		defer f.Close()
		// Flags the open file can still take: the caller and the init
		// share one open file description.
		if fl := flags & (unix.O_NONBLOCK | unix.O_APPEND | unix.O_NOATIME); fl != 0 {
			if cur, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0); err == nil {
				unix.FcntlInt(f.Fd(), unix.F_SETFL, cur|fl)
			}
		}
		add := seccompNotifAddfd{ID: n.ID, Flags: unix.SECCOMP_ADDFD_FLAG_SEND, Srcfd: uint32(f.Fd())}
		if flags&unix.O_CLOEXEC != 0 {
			add.NewfdFlags = unix.O_CLOEXEC
		}
		var addErr error
		rc.Control(func(fd uintptr) { addErr = ioctl(fd, unix.SECCOMP_IOCTL_NOTIF_ADDFD, unsafe.Pointer(&add)) })
		if addErr != nil && !errors.Is(addErr, unix.ENOENT) {
			// The descriptor did not go in (EMFILE, say): the open fails
			// with the reason.
			var e syscall.Errno
			if !errors.As(addErr, &e) {
				e = syscall.EIO
			}
			s.reply(rc, seccompNotifResp{ID: n.ID, Error: -int32(e)})
		}
	}()
}

// answerExec places the process before its new program runs, then lets the
// exec go on. The stage's own first exec was placed by its spawn. An exec
// that will fail is not placed: a shell, make or gcc looking a program up
// tries one directory of PATH after another, and each miss is an execve.
func (s *Supervisor) answerExec(rc syscall.RawConn, n *seccompNotif, t *Trap, buf []byte) {
	pid := tgidOf(int(n.PID))
	switch {
	case pid == t.Stage:
		t.Stage = 0
	case pid > 0 && t.Policy != "" && s.Place != nil && execWouldStart(int(n.PID), n, buf) && s.notifValid(rc, n.ID) == nil:
		s.Place(pid, t.Policy)
	}
	s.reply(rc, seccompNotifResp{ID: n.ID, Flags: unix.SECCOMP_USER_NOTIF_FLAG_CONTINUE})
}

// execWouldStart says whether the file a trapped execve or execveat names
// exists as an executable file, seen from the process (its root, its
// working directory or directory descriptor). It reads the path from the
// process's memory; any doubt says yes, and the exec decides.
func execWouldStart(tid int, n *seccompNotif, buf []byte) bool {
	// execve(path, argv, envp); execveat(dirfd, path, argv, envp, flags)
	dirfd, pathAddr, flags := int32(unix.AT_FDCWD), n.Data.Args[0], 0
	if n.Data.Nr == int32(unix.SYS_EXECVEAT) {
		dirfd, pathAddr, flags = int32(n.Data.Args[0]), n.Data.Args[1], int(n.Data.Args[4])
	}
	path, err := readString(tid, pathAddr, buf)
	if err != nil {
		return true
	}
	var full string
	switch {
	case path == "" && flags&unix.AT_EMPTY_PATH != 0:
		return true // the descriptor itself is the program
	case strings.HasPrefix(path, "/"):
		full = fmt.Sprintf("/proc/%d/root%s", tid, path)
	case dirfd == unix.AT_FDCWD:
		full = fmt.Sprintf("/proc/%d/cwd/%s", tid, path)
	default:
		full = fmt.Sprintf("/proc/%d/fd/%d/%s", tid, dirfd, path)
	}
	var st unix.Stat_t
	if err := unix.Stat(full, &st); err != nil {
		return !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENOTDIR)
	}
	return st.Mode&unix.S_IFMT == unix.S_IFREG && st.Mode&0o111 != 0
}

// tgidOf returns the process (thread group) of thread tid, or 0. A
// thread that calls execve is nearly always its process's only one, whose
// TID is the PID: pidfd_open(2) answers that in one system call, and only a
// thread that is not its group's leader costs a read of /proc.
func tgidOf(tid int) int {
	if fd, err := unix.PidfdOpen(tid, 0); err == nil {
		unix.Close(fd)
		return tid
	}
	s, err := vproc.ReadStatus(tid)
	if err != nil {
		return 0
	}
	return s.Tgid
}

// target says whether an open of path (relative to dirfd) by pid is one of
// a device of /rdev that a descriptor answers: not one that creates, wants
// a directory, or only a path, which the FUSE files answer as for any file.
func (s *Supervisor) target(pid int, dirfd int32, path string, flags int) (k int, name string, ok bool) {
	if path == "" || flags&(unix.O_CREAT|unix.O_DIRECTORY|unix.O_PATH|unix.O_TMPFILE) != 0 {
		return 0, "", false
	}
	if !strings.HasPrefix(path, "/") {
		// Only a relative open needs the process's directory looked up;
		// absolute ones outside /rdev, nearly all, go on at once.
		base := fmt.Sprintf("/proc/%d/cwd", pid)
		if dirfd != unix.AT_FDCWD {
			base = fmt.Sprintf("/proc/%d/fd/%d", pid, dirfd)
		}
		dir, err := os.Readlink(base)
		if err != nil || !strings.HasPrefix(dir, RdevDir) {
			return 0, "", false
		}
		path = filepath.Join(dir, path)
	}
	rest, found := strings.CutPrefix(filepath.Clean(path), RdevDir+"/")
	if !found {
		return 0, "", false
	}
	ks, name, found := strings.Cut(rest, "/")
	k, err := strconv.Atoi(ks)
	if !found || err != nil || !slices.ContainsFunc(s.Devices, func(d fabric.Device) bool { return d.OSlet == k && d.Name == name }) {
		return 0, "", false
	}
	// A process in a root of its own does not see this /rdev.
	if root, err := os.Readlink(fmt.Sprintf("/proc/%d/root", pid)); err != nil || root != "/" {
		return 0, "", false
	}
	return k, name, true
}

func (s *Supervisor) notifValid(rc syscall.RawConn, id uint64) error {
	var err error
	rc.Control(func(fd uintptr) { err = ioctl(fd, unix.SECCOMP_IOCTL_NOTIF_ID_VALID, unsafe.Pointer(&id)) })
	return err
}

func (s *Supervisor) reply(rc syscall.RawConn, resp seccompNotifResp) {
	var err error
	rc.Control(func(fd uintptr) { err = ioctl(fd, unix.SECCOMP_IOCTL_NOTIF_SEND, unsafe.Pointer(&resp)) })
	// ENOENT: the process died or a signal interrupted the open; it is
	// restarted or gone, and either way needs no answer.
	if err != nil && !errors.Is(err, unix.ENOENT) {
		s.Log.Warn("direct device opens: reply", "err", err)
	}
}

func ioctl(fd uintptr, req uint, arg unsafe.Pointer) error {
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, uintptr(req), uintptr(arg))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return errno
		}
		return nil
	}
}

// readString reads a NUL-terminated path from another process's memory
// into buf (a page long), a page at a time: a read that crosses into an
// unmapped page fails whole.
func readString(pid int, addr uint64, buf []byte) (string, error) {
	var out []byte
	for len(out) < unix.PathMax {
		n := pageSize - int(addr%pageSize)
		local := []unix.Iovec{{Base: &buf[0], Len: uint64(n)}}
		remote := []unix.RemoteIovec{{Base: uintptr(addr), Len: n}}
		got, err := unix.ProcessVMReadv(pid, local, remote, 0)
		if err != nil {
			return "", err
		}
		if got == 0 {
			return "", io.ErrUnexpectedEOF
		}
		if i := bytes.IndexByte(buf[:got], 0); i >= 0 {
			return string(append(out, buf[:i]...)), nil
		}
		out = append(out, buf[:got]...)
		addr += uint64(got)
	}
	return "", unix.ENAMETOOLONG
}
