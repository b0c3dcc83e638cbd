package trap

import "golang.org/x/sys/unix"

// The seccomp filter's view of this architecture: its audit arch, the
// calls that open a path that direct device opens trap, and the calls that
// start a program that a spreading launch policy traps.
const auditArch = unix.AUDIT_ARCH_AARCH64

var trappedCalls = []uint32{unix.SYS_OPENAT}

var execCalls = []uint32{unix.SYS_EXECVE, unix.SYS_EXECVEAT}
