package vproc

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"

	"github.com/smpc-cluster/smpc/internal/fabric"
)

// Cred is who acts, as the fabric carries it.
type Cred = fabric.Cred

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
	b, err := ReadKernelFile("/proc/" + strconv.Itoa(pid) + "/status")
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

// FileCredOf reads the identity process pid opens files with.
func FileCredOf(pid int) (Cred, error) {
	s, err := ReadStatus(pid)
	if err != nil {
		return Cred{}, err
	}
	return s.FileCred(), nil
}

// Cmdline reads process pid's command line as ps shows it, its arguments
// joined by spaces; "" for a kernel thread, a zombie or a process gone.
func Cmdline(pid int) string {
	b, err := ReadKernelFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(strings.ReplaceAll(string(bytes.TrimRight(b, "\x00")), "\x00", " "))
}
