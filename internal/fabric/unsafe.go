package fabric

import (
	"encoding/binary"
	"unsafe"
)

// x/sys/unix has no getsockopt for SO_PEERGROUPS, whose answer is an array of
// gid_t; these helpers make that one raw call.

func unsafePointer(b []byte) unsafe.Pointer    { return unsafe.Pointer(&b[0]) }
func unsafePointer32(p *uint32) unsafe.Pointer { return unsafe.Pointer(p) }
func nativeUint32(b []byte) uint32             { return binary.NativeEndian.Uint32(b) }
