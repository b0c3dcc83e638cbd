package device

import "golang.org/x/sys/unix"

// The seccomp filter's view of this architecture: its audit arch, and the
// calls that open a path that direct device opens trap.
const auditArch = unix.AUDIT_ARCH_X86_64

var trappedCalls = []uint32{unix.SYS_OPEN, unix.SYS_OPENAT}
