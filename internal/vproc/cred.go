package vproc

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Cred is who acts: a process's identity as the kernel gave it (SO_PEERCRED
// and SO_PEERGROUPS, or /proc), taken by the first init a request reached
// and trusted from peers only. One type serves every check smpc makes for a
// caller: signals, waits, shared memory, devices.
type Cred struct {
	UID    uint32   `json:"uid"`
	GID    uint32   `json:"gid"`
	Groups []uint32 `json:"groups,omitempty"`
	PID    int32    `json:"pid,omitempty"` // PID in the cluster, or a host PID
}

// Allows applies the kernel's permission check of mode bits to an object
// owned by uid and gid: root may do anything; otherwise the owner's, the
// group's or the others' bits must grant every bit of want (4 read,
// 2 write).
func (c Cred) Allows(uid, gid, mode, want uint32) bool {
	if c.UID == 0 {
		return true
	}
	switch {
	case c.UID == uid:
		mode >>= 6
	case c.GID == gid || slices.Contains(c.Groups, gid):
		mode >>= 3
	}
	return mode&want == want
}

// Status is what smpc reads of /proc/PID/status.
type Status struct {
	Tgid, PPid int
	UID, GID   [4]uint32 // real, effective, saved, file system
	Groups     []uint32
	// NSpid is the process's PID in each PID namespace it is in, the
	// reader's first and its own last.
	NSpid []int
}

// ReadStatus reads /proc/PID/status in the caller's /proc.
func ReadStatus(pid int) (Status, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return Status{}, err
	}
	var s Status
	var haveIDs int
	for _, line := range strings.Split(string(b), "\n") {
		key, rest, _ := strings.Cut(line, ":")
		f := strings.Fields(rest)
		switch key {
		case "Tgid":
			s.Tgid, _ = strconv.Atoi(strings.TrimSpace(rest))
		case "PPid":
			s.PPid, _ = strconv.Atoi(strings.TrimSpace(rest))
		case "Uid", "Gid":
			if len(f) != 4 {
				continue
			}
			ids := &s.UID
			if key == "Gid" {
				ids = &s.GID
			}
			for n, v := range f {
				id, err := strconv.ParseUint(v, 10, 32)
				if err != nil {
					return Status{}, fmt.Errorf("/proc/%d/status: %s: %w", pid, key, err)
				}
				ids[n] = uint32(id)
			}
			haveIDs++
		case "Groups":
			for _, g := range f {
				if n, err := strconv.ParseUint(g, 10, 32); err == nil {
					s.Groups = append(s.Groups, uint32(n))
				}
			}
		case "NSpid":
			for _, p := range f {
				if n, err := strconv.Atoi(p); err == nil {
					s.NSpid = append(s.NSpid, n)
				}
			}
		}
	}
	if haveIDs != 2 {
		return Status{}, fmt.Errorf("/proc/%d/status: no credentials", pid)
	}
	return s, nil
}

// FileCred is the identity a process opens files with: its file-system
// IDs and its groups.
func (s Status) FileCred() Cred { return Cred{UID: s.UID[3], GID: s.GID[3], Groups: s.Groups} }
