// Package fabric is the message layer between OSlets: the seed's proxy
// channels. It defines the versioned frames the OSlets exchange, the messages
// they carry, a Unix-socket transport that passes file descriptors with them
// (SCM_RIGHTS: where the seed passes physical pages, we pass descriptors), the
// version handshake, a caller that multiplexes calls on one channel, and a
// server whose peer requests go through a queued lock.
//
// Messages and their encoding (frame.go, messages.go) know nothing of the
// transport (conn.go), so a later transport between machines can carry them.
package fabric

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
)

// The protocol version this build speaks. A peer with another major version
// is refused; a peer with another minor version gets compatible answers
// (messages only ever gain optional fields within a major version).
const (
	// Major 2: PIDs are the cluster's one PID namespace's (1.x had a PID
	// namespace per OSlet and global PIDs k<<22|p), and System V IPC is the
	// kernel's in the cluster's one IPC namespace (1.x's ipc-* operations
	// are gone). A 1.x OSlet is refused with both versions named.
	//
	// Minor 1: a reply too large for one frame spans several (FlagMore),
	// so that a list of any length (ps of 8,000 processes) comes back
	// whole. A 2.0 caller gets an error for such a reply, as before.
	Major = 2
	Minor = 1
)

// MaxReply bounds a reply that spans frames.
const MaxReply = 64 << 20

// HeaderSize is the size of a frame's fixed header.
const HeaderSize = 24

// MaxFrame bounds a frame, header included: it fits the kernel's default
// socket send buffer, so one frame is always one datagram.
const MaxFrame = 128 << 10

// MaxFiles bounds the descriptors one frame may carry.
const MaxFiles = 64

const magic = 0x534d5043 // "SMPC"

// Op names what a frame asks for.
type Op uint16

// The operations.
const (
	OpHello     Op = 1 + iota // version handshake; first frame on every channel
	OpPing                    // null call
	OpSpawn                   // create a process
	OpSignal                  // deliver a signal
	OpWait                    // wait for a process to end
	OpOrphan                  // a remote parent is gone
	OpProcesses               // list processes
	OpStatus                  // describe OSlets
	OpPingPeer                // time null calls from this OSlet to another (benchmarks)
	OpShm                     // named shared memory: create, open, list, remove
	OpDevice                  // /rdev: open a device, list an OSlet's devices
	opEnd
)

var opNames = [...]string{"", "hello", "ping", "spawn", "signal", "wait", "orphan", "processes", "status", "ping-peer",
	"shm", "device"}

func (o Op) String() string {
	if o > 0 && o < opEnd {
		return opNames[o]
	}
	return fmt.Sprintf("op(%d)", uint16(o))
}

// Flags qualify a frame.
type Flags uint16

// The flags.
const (
	FlagReply Flags = 1 << iota // the frame answers the request with the same ID
	FlagError                   // the reply's body is an *Error
	// FlagMore marks a frame of a reply whose body goes on in the next
	// frame of the same ID (2.1); the last frame has no FlagMore, and the
	// reply's descriptors travel with the first.
	FlagMore
)

// Header is a frame's fixed part. On the wire: magic (4 bytes), major,
// minor, op (2), flags (2), reserved (2), id (8), body length (4), all little
// endian.
type Header struct {
	Major, Minor uint8
	Op           Op
	Flags        Flags
	ID           uint64
	Len          uint32
}

// Frame is one message: a header, a JSON body, and the descriptors that
// travel with it.
type Frame struct {
	Header
	Body  []byte
	Files []*os.File
}

// ErrFrame reports bytes that are not a valid frame.
var ErrFrame = errors.New("malformed frame")

// AppendTo appends the frame's header and body to b.
func (f *Frame) AppendTo(b []byte) []byte {
	var h [HeaderSize]byte
	binary.LittleEndian.PutUint32(h[0:], magic)
	h[4], h[5] = f.Major, f.Minor
	binary.LittleEndian.PutUint16(h[6:], uint16(f.Op))
	binary.LittleEndian.PutUint16(h[8:], uint16(f.Flags))
	binary.LittleEndian.PutUint64(h[12:], f.ID)
	binary.LittleEndian.PutUint32(h[20:], uint32(len(f.Body)))
	return append(append(b, h[:]...), f.Body...)
}

// ParseFrame decodes one datagram. The body aliases b.
func ParseFrame(b []byte) (*Frame, error) {
	if len(b) < HeaderSize {
		return nil, fmt.Errorf("%w: %d bytes is shorter than a header", ErrFrame, len(b))
	}
	if m := binary.LittleEndian.Uint32(b); m != magic {
		return nil, fmt.Errorf("%w: bad magic %#x", ErrFrame, m)
	}
	f := &Frame{Header: Header{
		Major: b[4], Minor: b[5],
		Op:    Op(binary.LittleEndian.Uint16(b[6:])),
		Flags: Flags(binary.LittleEndian.Uint16(b[8:])),
		ID:    binary.LittleEndian.Uint64(b[12:]),
		Len:   binary.LittleEndian.Uint32(b[20:]),
	}}
	if int(f.Len) != len(b)-HeaderSize {
		return nil, fmt.Errorf("%w: header says %d body bytes, datagram has %d", ErrFrame, f.Len, len(b)-HeaderSize)
	}
	// An op past ours from a peer of a newer minor version is a request we
	// cannot serve, not garbage: Serve refuses it and the channel lives on.
	// A reply only echoes its request's op.
	if f.Op == 0 || (f.Op >= opEnd && f.Minor <= Minor && f.Flags&FlagReply == 0) {
		return nil, fmt.Errorf("%w: unknown op %d", ErrFrame, uint16(f.Op))
	}
	f.Body = b[HeaderSize:]
	return f, nil
}

// errTooLarge says a message does not fit one frame.
var errTooLarge = errors.New("too large for one frame")

// NewFrame builds a request or reply frame whose body is v encoded as JSON.
func NewFrame(op Op, id uint64, flags Flags, v any, files []*os.File) (*Frame, error) {
	body, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", op, err)
	}
	return frameOf(op, id, flags, body, files)
}

// frameOf builds a frame around an encoded body.
func frameOf(op Op, id uint64, flags Flags, body []byte, files []*os.File) (*Frame, error) {
	if HeaderSize+len(body) > MaxFrame {
		return nil, fmt.Errorf("encode %s: message of %d bytes is larger than the %d a frame holds: %w", op, len(body), MaxFrame-HeaderSize, errTooLarge)
	}
	if len(files) > MaxFiles {
		return nil, fmt.Errorf("encode %s: %d descriptors, at most %d travel with a frame", op, len(files), MaxFiles)
	}
	return &Frame{Header: Header{Major: Major, Minor: Minor, Op: op, Flags: flags, ID: id}, Body: body, Files: files}, nil
}

// Decode unmarshals the frame's body into v. An error reply decodes to its
// *Error instead.
func (f *Frame) Decode(v any) error {
	if f.Flags&FlagError != 0 {
		var e Error
		if err := json.Unmarshal(f.Body, &e); err != nil {
			return fmt.Errorf("decode %s error reply: %w", f.Op, err)
		}
		return &e
	}
	if err := json.Unmarshal(f.Body, v); err != nil {
		return fmt.Errorf("decode %s: %w", f.Op, err)
	}
	return nil
}

// CloseFiles closes the descriptors a frame brought that nobody took.
func (f *Frame) CloseFiles() {
	CloseAll(f.Files) // a nil entry, taken by a handler, closes nothing
	f.Files = nil
}
