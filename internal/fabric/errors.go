package fabric

import (
	"errors"
	"fmt"
)

// Code classifies an error so that it survives the trip between OSlets and
// can be matched with errors.Is.
type Code string

// The error codes; each mirrors the Linux errno a local call would give.
const (
	CodeNoProcess  Code = "ESRCH"  // no such process
	CodePermission Code = "EPERM"  // not allowed
	CodeNotFound   Code = "ENOENT" // program or file not found
	CodeNoExec     Code = "EACCES" // program not executable
	CodeInvalid    Code = "EINVAL" // bad request
	CodeDown       Code = "DOWN"   // the OSlet is down
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

// Is lets errors.Is match an *Error against the sentinel of its code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Message == "" && t.Code == e.Code
}

// Sentinels for errors.Is.
var (
	ErrNoProcess  = &Error{Code: CodeNoProcess}
	ErrPermission = &Error{Code: CodePermission}
	ErrNotFound   = &Error{Code: CodeNotFound}
	ErrNoExec     = &Error{Code: CodeNoExec}
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

// AsError converts any error into an *Error for a reply.
func AsError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Code: CodeInternal, Message: err.Error()}
}
