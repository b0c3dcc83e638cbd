package fabric

import (
	"errors"
	"fmt"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Code classifies an error so that it survives the trip between OSlets and
// can be matched with errors.Is.
type Code string

// The error codes; each mirrors the Linux errno a local call would give.
const (
	CodeNoProcess  Code = "ESRCH"    // no such process
	CodePermission Code = "EPERM"    // not allowed
	CodeNotFound   Code = "ENOENT"   // program, file or IPC key not found
	CodeAccess     Code = "EACCES"   // the mode bits refuse access
	CodeNoExec          = CodeAccess // program not executable
	CodeInvalid    Code = "EINVAL"   // bad request
	CodeExists     Code = "EEXIST"   // IPC_CREAT|IPC_EXCL on a key in use
	CodeNoSpace    Code = "ENOSPC"   // a table is full
	CodeDown       Code = "DOWN"     // the OSlet is down
	CodeVersion    Code = "VERSION"
	CodeRefused    Code = "REFUSED" // refused by policy (the seed's socket rule)
	CodeInternal   Code = "INTERNAL"
)

// Error is an error carried in a reply.
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Message }

// Is lets errors.Is match an *Error against the sentinel of its code, and
// against the syscall.Errno its code names (errors.Is(err, syscall.EEXIST)),
// so that an error from another OSlet matches as the local call's would.
func (e *Error) Is(target error) bool {
	switch t := target.(type) {
	case *Error:
		return t.Message == "" && t.Code == e.Code
	case syscall.Errno:
		return t != 0 && unix.ErrnoName(t) == string(e.Code)
	}
	return false
}

// Sentinels for errors.Is.
var (
	ErrNoProcess  = &Error{Code: CodeNoProcess}
	ErrPermission = &Error{Code: CodePermission}
	ErrNotFound   = &Error{Code: CodeNotFound}
	ErrNoExec     = &Error{Code: CodeNoExec}
	ErrAccess     = &Error{Code: CodeAccess}
	ErrExists     = &Error{Code: CodeExists}
	ErrInvalid    = &Error{Code: CodeInvalid}
	ErrDown       = &Error{Code: CodeDown}
	ErrVersion    = &Error{Code: CodeVersion}
	ErrRefused    = &Error{Code: CodeRefused}
)

// Errorf makes an *Error with a code.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// DownError says that OSlet k is down.
func DownError(k int) *Error { return Errorf(CodeDown, "oslet %d is down", k) }

// NotAnsweringError says OSlet k's init is alive but does not answer (it
// is stopped, or hung): for its callers it is down, and the message says
// which way.
func NotAnsweringError(k int, why string) *Error {
	return Errorf(CodeDown, "oslet %d is not answering (%s)", k, why)
}

// AsError converts any error into an *Error for a reply. An error that
// wraps a syscall.Errno gets the errno's name as its code, so that it
// crosses OSlets and still matches the errno; others are internal errors.
func AsError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	var errno syscall.Errno
	if errors.As(err, &errno) && unix.ErrnoName(errno) != "" {
		return &Error{Code: Code(unix.ErrnoName(errno)), Message: err.Error()}
	}
	return &Error{Code: CodeInternal, Message: err.Error()}
}

// Errno returns the errno an error stands for: the one it wraps, or the one
// an *Error from another OSlet is coded with. It is how a reply becomes a
// system call's result again (an open served for a process, say).
func Errno(err error) (syscall.Errno, bool) {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno, true
	}
	var e *Error
	if errors.As(err, &e) {
		if v, ok := errnoByName()[string(e.Code)]; ok {
			return v, true
		}
	}
	return 0, false
}

// ErrnoOf is the errno a system call served for a process fails with: the
// one err stands for (as Errno finds it), else EIO.
func ErrnoOf(err error) syscall.Errno {
	if errno, ok := Errno(err); ok {
		return errno
	}
	return syscall.EIO
}

// errnoByName inverts unix.ErrnoName, which names every errno Linux has
// below 256.
var errnoByName = sync.OnceValue(func() map[string]syscall.Errno {
	m := map[string]syscall.Errno{}
	for e := syscall.Errno(1); e < 256; e++ {
		if name := unix.ErrnoName(e); name != "" {
			m[name] = e
		}
	}
	return m
})
