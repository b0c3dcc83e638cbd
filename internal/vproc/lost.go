package vproc

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
)

// LostFile is where a cluster records the processes it lost with a failed
// OSlet, in its state dir: a later wait for one of them reports it lost
// (137) rather than unknown, as a waiter that was already waiting saw.
func LostFile(stateDir string) string { return filepath.Join(stateDir, "lost.json") }

// maxLost bounds the record: the oldest OSlet failures are forgotten first.
const maxLost = 1 << 16

// lostRecord maps a PID in the cluster to the OSlet it was lost with, and
// keeps the order they were recorded in.
type lostRecord struct {
	OSlet map[string]int `json:"oslet"`
	Order []PID          `json:"order"`
}

// RecordLost adds the processes lost with OSlet k to the record at path.
// Only the boot process writes it.
func RecordLost(path string, k int, pids []PID) error {
	var rec lostRecord
	if b, err := os.ReadFile(path); err == nil {
		json.Unmarshal(b, &rec)
	}
	if rec.OSlet == nil {
		rec.OSlet = map[string]int{}
	}
	for _, p := range pids {
		rec.OSlet[p.String()] = k
		rec.Order = append(rec.Order, p)
	}
	for len(rec.Order) > maxLost {
		delete(rec.OSlet, rec.Order[0].String())
		rec.Order = rec.Order[1:]
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	tmp := path + ".new"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// WasLost says whether pid was lost with an OSlet, and which.
func WasLost(path string, pid PID) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	var rec lostRecord
	if json.Unmarshal(b, &rec) != nil {
		return 0, false
	}
	k, ok := rec.OSlet[strconv.Itoa(int(pid))]
	return k, ok
}
