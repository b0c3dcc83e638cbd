package ipc

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// List reads every object of the caller's IPC namespace from /proc/sysvipc,
// which shows the namespace of the thread that opens it and numbers PIDs as
// the caller's PID namespace does. osletOf names the OSlet of such a PID.
func List(osletOf func(pid int) int) ([]Info, error) {
	var all []Info
	for _, k := range Kinds {
		objs, err := listKind(k)
		if err != nil {
			return nil, err
		}
		for n := range objs {
			objs[n].findUser(osletOf)
		}
		all = append(all, objs...)
	}
	return all, nil
}

// findUser fills in the process the object names as its user (its
// creator, last sender or last operator) and, with osletOf, its OSlet.
func (o *Info) findUser(osletOf func(pid int) int) {
	switch o.Kind {
	case KindMsg:
		o.PID = o.LSPID
	case KindShm:
		o.PID = o.CPID
	case KindSem:
		if pid, err := SemGetPID(o.ID, 0); err == nil {
			o.PID = int32(pid)
		}
	}
	if o.PID > 0 && osletOf != nil {
		o.OSlet = osletOf(int(o.PID))
	}
}

// Stat describes the object kind id: one file of /proc/sysvipc read, and
// only that object's user looked up.
func Stat(kind Kind, id int32, osletOf func(pid int) int) (Info, error) {
	objs, err := listKind(kind)
	if err != nil {
		return Info{}, err
	}
	for _, o := range objs {
		if o.ID == id {
			o.findUser(osletOf)
			return o, nil
		}
	}
	return Info{}, fmt.Errorf("%s id %d: no such object", kind, id)
}

// The columns of /proc/sysvipc/{msg,sem,shm}, named by their headers.
func listKind(k Kind) ([]Info, error) {
	f, err := os.Open("/proc/sysvipc/" + k.String())
	if err != nil {
		return nil, fmt.Errorf("list %s objects: %w", k, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var header []string
	var out []Info
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if header == nil {
			header = fields
			continue
		}
		col := func(name string) int64 {
			base := 10
			if name == "perms" {
				base = 8 // the kernel prints the mode in octal
			}
			for n, h := range header {
				if h == name && n < len(fields) {
					v, _ := strconv.ParseInt(fields[n], base, 64)
					return v
				}
			}
			return 0
		}
		o := Info{Kind: k, Key: int32(uint32(col("key"))), Mode: uint32(col("perms")),
			UID: uint32(col("uid")), GID: uint32(col("gid")), CUID: uint32(col("cuid")), CGID: uint32(col("cgid")),
			CTime: col("ctime")}
		switch k {
		case KindMsg:
			o.ID = int32(col("msqid"))
			o.CBytes, o.QNum = uint64(col("cbytes")), uint64(col("qnum"))
			o.LSPID, o.LRPID = int32(col("lspid")), int32(col("lrpid"))
		case KindSem:
			o.ID = int32(col("semid"))
			o.NSems = int(col("nsems"))
		case KindShm:
			o.ID = int32(col("shmid"))
			o.Size = col("size")
			o.CPID, o.LPID = int32(col("cpid")), int32(col("lpid"))
			o.Attached = int(col("nattch"))
		}
		out = append(out, o)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("list %s objects: %w", k, err)
	}
	return out, nil
}
