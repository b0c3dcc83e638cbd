package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc"
)

// mapShared maps a file MAP_SHARED, as a program sharing memory would.
func mapShared(f *os.File, size int) ([]byte, error) {
	return unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
}

// awaitBytes polls shared memory until want appears at off.
func awaitBytes(mem []byte, off int, want string) error {
	deadline := time.Now().Add(10 * time.Second)
	for string(mem[off:off+len(want)]) != want {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out waiting for %q at %d, have %q", want, off, mem[off:off+len(want)])
		}
		time.Sleep(time.Millisecond)
	}
	return nil
}

// exchangeThrough is one side of an exchange through shared pages: the
// writer writes "ping" and waits for "pong"; the reader waits for "ping"
// and answers "pong" in its own mapping.
func exchangeThrough(mem []byte, writer bool) error {
	if writer {
		copy(mem, "ping")
		return awaitBytes(mem, 100, "pong")
	}
	if err := awaitBytes(mem, 0, "ping"); err != nil {
		return err
	}
	copy(mem[100:], "pong")
	return nil
}

// TestShmHelper, run inside OSlets by TestSharedMemory, is one side of an
// exchange through shared pages: the writer maps SMPC_PATH (creating it),
// writes "ping" and waits for "pong"; the reader waits for "ping" and
// answers "pong", through its own mapping. With SMPC_PROXY the reader gets
// its descriptor from the object's home instead of opening the path.
func TestShmHelper(t *testing.T) {
	role := os.Getenv("SMPC_E2E_HELPER")
	if role != "shm-writer" && role != "shm-reader" {
		t.Skip("helper process for TestSharedMemory")
	}
	path := os.Getenv("SMPC_PATH")
	var f *os.File
	var err error
	switch {
	case role == "shm-writer":
		if f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600); err == nil {
			err = f.Truncate(4096)
		}
	case os.Getenv("SMPC_PROXY") != "":
		var c *smpc.Client
		if c, err = smpc.Connect(""); err == nil {
			f, err = c.ShmOpen(context.Background(), os.Getenv("SMPC_PROXY"), true)
		}
	default:
		// The writer, started first, may not have made it yet.
		err = fmt.Errorf("%s never reached 4096 bytes", path)
		for try := 0; try < 1000 && err != nil; try++ {
			time.Sleep(10 * time.Millisecond)
			if f, err = os.OpenFile(path, os.O_RDWR, 0); err == nil {
				if st, serr := f.Stat(); serr != nil || st.Size() < 4096 {
					f.Close()
					err = fmt.Errorf("%s is short: %v %v", path, st, serr)
				}
			}
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	mem, err := mapShared(f, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if err := exchangeThrough(mem, role == "shm-writer"); err != nil {
		t.Fatal(err)
	}
	fmt.Println(role, "ok")
}

// TestSharedMemory checks that processes on different OSlets share pages:
// through /dev/shm (what shm_open uses), through a /gtmp file mapped
// MAP_SHARED, and through an object made with smpc shm create whose
// descriptor the home's proxy hands out; and that such an object is
// charged to its home, listed, refused past the home's memory, guarded by
// its mode, and removed.
func TestSharedMemory(t *testing.T) {
	c := boot(t)
	helper := testBinary(t)
	exchange := func(writerPath, readerPath, proxy string) {
		t.Helper()
		writer, writerDone := c.background("run", "--on", "1", "--", "/usr/bin/env", "SMPC_E2E_HELPER=shm-writer", "SMPC_PATH="+writerPath,
			helper, "-test.run=^TestShmHelper$")
		defer writer.Process.Kill()
		out, code := c.smpc("run", "--on", "2", "--", "/usr/bin/env", "SMPC_E2E_HELPER=shm-reader", "SMPC_PATH="+readerPath, "SMPC_PROXY="+proxy,
			helper, "-test.run=^TestShmHelper$")
		if code != 0 || !strings.Contains(out, "shm-reader ok") {
			t.Fatalf("reader of %s on oslet 2: %d %s", readerPath, code, out)
		}
		if out, code := writerDone(); code != 0 || !strings.Contains(out, "shm-writer ok") {
			t.Fatalf("writer of %s on oslet 1: %d %s", writerPath, code, out)
		}
	}
	exchange("/dev/shm/e2e-posix", "/dev/shm/e2e-posix", "")
	exchange("/gtmp/e2e-mapped", "/gtmp/e2e-mapped", "")
	// The host sees the cluster's /dev/shm under the state dir.
	if _, err := os.Stat(c.dir + "/shm/e2e-posix"); err != nil {
		t.Errorf("the host's view of the cluster's /dev/shm: %v", err)
	}

	before := usedMemory(c, 2)
	c.must("shm", "create", "e2e-homed", "64M", "--on", "2", "--pinned", "--mode", "0600")
	if grew := usedMemory(c, 2) - before; grew < 60<<20 {
		t.Errorf("oslet 2's memory grew by %d bytes for a 64M object homed there", grew)
	}
	var list []smpc.ShmInfo
	json.Unmarshal([]byte(c.must("shm", "ls", "--json")), &list)
	found := false
	for _, o := range list {
		if o.Name == "e2e-homed" {
			found = o.Home == 2 && o.Size == 64<<20 && o.Pinned && o.Mode == 0o600 && o.UID == 0
		}
	}
	if !found {
		t.Fatalf("shm ls: %+v", list)
	}
	// The writer maps the object by its path, the reader gets it from the
	// home's proxy: the same pages either way.
	exchange("/dev/shm/e2e-homed", "", "e2e-homed")

	if out, code := c.smpc("shm", "create", "e2e-huge", "1T", "--on", "1"); code != 1 || !strings.Contains(out, "has free") {
		t.Errorf("create past the home's memory: %d %s", code, out)
	}
	if out, code := c.smpc("shm", "create", "e2e-homed", "1M"); code != 1 || !strings.Contains(out, "file exists") {
		t.Errorf("create on a name in use: %d %s", code, out)
	}
	nobody := []string{"setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", smpcBin}
	if out, code := c.smpc(append(append([]string{"run", "--on", "1", "--"}, nobody...), "shm", "rm", "e2e-homed")...); code != 1 || !strings.Contains(out, "not permitted") {
		t.Errorf("nobody removed root's object: %d %s", code, out)
	}
	for _, bad := range [][]string{{"shm", "create", "a/b", "1M"}, {"shm", "create", "x", "lots"}, {"shm", "rm", "e2e-none"}} {
		if out, code := c.smpc(bad...); code == 0 || out == "" {
			t.Errorf("smpc %v: exit %d with %q, want an error", bad, code, out)
		}
	}
	c.must("shm", "rm", "e2e-homed", "e2e-posix")
	waitFor(t, "oslet 2's memory to go back down", func() bool { return usedMemory(c, 2)-before < 16<<20 })
}

func usedMemory(c *cluster, k int) int64 {
	c.t.Helper()
	var st []struct {
		Index      int   `json:"index"`
		MemoryUsed int64 `json:"memory_used"`
	}
	json.Unmarshal([]byte(c.must("status", "--json")), &st)
	for _, o := range st {
		if o.Index == k {
			return o.MemoryUsed
		}
	}
	c.t.Fatalf("no oslet %d in status", k)
	return 0
}

// TestUnixSocketHelper, run inside OSlets by TestPipesAndSockets: the server
// serves one connection on a Unix socket at SMPC_PATH, answering the
// SHA-256 of all it reads; the client sends /gtmp/data and prints the
// answer.
func TestUnixSocketHelper(t *testing.T) {
	path := os.Getenv("SMPC_PATH")
	switch os.Getenv("SMPC_E2E_HELPER") {
	case "unix-server":
	case "unix-client":
		conn, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile("/gtmp/data")
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			conn.Write(data)
			conn.(*net.UnixConn).CloseWrite()
		}()
		reply, err := io.ReadAll(conn)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Println("reply", strings.TrimSpace(string(reply)))
		return
	default:
		t.Skip("helper process for TestPipesAndSockets")
	}
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println("listening")
	conn, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, conn); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(conn, hex.EncodeToString(h.Sum(nil)))
	conn.Close()
}

// TestPipesAndSockets checks a FIFO made in /gtmp and a Unix socket bound
// under /gtmp between processes on different OSlets, the data checked end
// to end.
func TestPipesAndSockets(t *testing.T) {
	c := boot(t)
	data := bytes.Repeat([]byte("smpc fifo and socket data\n"), 1<<16) // 1.6 MiB
	sum := sha256.Sum256(data)
	want := hex.EncodeToString(sum[:])
	if err := os.WriteFile(c.dir+"/gtmp/data", data, 0o644); err != nil {
		t.Fatal(err)
	}

	// FIFO: made on OSlet 1, written on OSlet 1, read on OSlet 2.
	c.must("run", "--on", "1", "--", "mkfifo", "/gtmp/fifo")
	writer, writerDone := c.background("run", "--on", "1", "--", "sh", "-c", "cat /gtmp/data > /gtmp/fifo")
	defer writer.Process.Kill()
	out := c.must("run", "--on", "2", "--", "sh", "-c", "sha256sum < /gtmp/fifo")
	if !strings.HasPrefix(out, want) {
		t.Errorf("through the FIFO: %s, want %s", out, want)
	}
	if out, code := writerDone(); code != 0 {
		t.Errorf("FIFO writer: %d %s", code, out)
	}

	// Unix socket: bound on OSlet 2, connected from OSlet 1.
	server, serverDone := c.background("run", "--on", "2", "--", "/usr/bin/env", "SMPC_E2E_HELPER=unix-server", "SMPC_PATH=/gtmp/sock",
		testBinary(t), "-test.run=^TestUnixSocketHelper$")
	defer server.Process.Kill()
	waitFor(t, "the socket to be bound", func() bool { _, err := os.Stat(c.dir + "/gtmp/sock"); return err == nil })
	out = c.must("run", "--on", "1", "--", "/usr/bin/env", "SMPC_E2E_HELPER=unix-client", "SMPC_PATH=/gtmp/sock",
		testBinary(t), "-test.run=^TestUnixSocketHelper$")
	if !strings.Contains(out, "reply "+want) {
		t.Errorf("through the socket from oslet 1 to oslet 2: %s, want %s", out, want)
	}
	if out, code := serverDone(); code != 0 {
		t.Errorf("socket server on oslet 2: %d %s", code, out)
	}
}

// TestSysVShmHelper, run inside OSlets by TestSysVSharedMemory, is one side
// of an exchange through a System V segment: the writer creates the segment
// with SMPC_KEY, attaches it, writes "ping" and waits for "pong"; the
// reader attaches it, waits for "ping" and answers "pong".
func TestSysVShmHelper(t *testing.T) {
	role := os.Getenv("SMPC_E2E_HELPER")
	if role != "sysv-writer" && role != "sysv-reader" {
		t.Skip("helper process for TestSysVSharedMemory")
	}
	key, _ := smpc.ParseIPCKey(os.Getenv("SMPC_KEY"))
	c, err := smpc.Connect("")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	flags := 0
	if role == "sysv-writer" {
		flags = smpc.IPCCreate | smpc.IPCExcl | 0o600
	}
	var seg *smpc.ShmSegment
	for try := 0; try < 500; try++ { // the writer, started first, may not have made it yet
		if seg, err = c.ShmGet(context.Background(), key, 4096, flags); err == nil || flags != 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	mem, err := seg.Attach(false)
	if err != nil {
		t.Fatal(err)
	}
	defer seg.Detach(mem)
	if err := exchangeThrough(mem, role == "sysv-writer"); err != nil {
		t.Fatal(err)
	}
	fmt.Println(role, "ok")
}

// TestSysVSharedMemory checks System V shared memory across OSlets: a
// segment made on one OSlet and attached on another shares its pages, is
// listed by ipcs with its size, refuses a size past the machine's memory,
// and is removed by ipcrm -m and -M, also through the Go package from the
// host.
func TestSysVSharedMemory(t *testing.T) {
	c := boot(t)
	helper := testBinary(t)
	writer, writerDone := c.background("run", "--on", "1", "--", "/usr/bin/env", "SMPC_E2E_HELPER=sysv-writer", "SMPC_KEY=0x5e6",
		helper, "-test.run=^TestSysVShmHelper$")
	defer writer.Process.Kill()
	out, code := c.smpc("run", "--on", "2", "--", "/usr/bin/env", "SMPC_E2E_HELPER=sysv-reader", "SMPC_KEY=0x5e6",
		helper, "-test.run=^TestSysVShmHelper$")
	if code != 0 || !strings.Contains(out, "sysv-reader ok") {
		t.Fatalf("reader on oslet 2: %d %s", code, out)
	}
	if out, code := writerDone(); code != 0 || !strings.Contains(out, "sysv-writer ok") {
		t.Fatalf("writer on oslet 1: %d %s", code, out)
	}
	var objs []smpc.IPCInfo
	json.Unmarshal([]byte(c.must("ipcs", "-m", "--json")), &objs)
	if len(objs) != 1 || objs[0].Kind != smpc.KindShm || objs[0].Key != 0x5e6 || objs[0].Size != 4096 {
		t.Fatalf("ipcs -m: %+v", objs)
	}
	if out := c.must("ipcs"); !strings.Contains(out, "Shared Memory Segments") || !strings.Contains(out, "0x000005e6") {
		t.Errorf("ipcs table:\n%s", out)
	}

	// From the host, through the Go package: a second segment, too large a
	// third, and removal by ID and by key.
	client, err := smpc.Connect(c.dir)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if _, err := client.ShmGet(context.Background(), 0x5e7, 1<<40, smpc.IPCCreate|0o600); !errors.Is(err, syscall.ENOMEM) && !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("a segment past the machine's memory: %v, want ENOMEM or ENOSPC", err)
	}
	seg, err := client.ShmGet(context.Background(), 0x5e7, 1<<20, smpc.IPCCreate|0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.ShmGet(context.Background(), 0x5e7, 2<<20, 0); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("shmget larger than the segment: %v, want EINVAL", err)
	}
	c.must("ipcrm", "-m", strconv.Itoa(int(seg.ID())), "-M", "0x5e6")
	if _, err := seg.Attach(true); err == nil {
		t.Errorf("attach after removal succeeded")
	}
	json.Unmarshal([]byte(c.must("ipcs", "--json")), &objs)
	if len(objs) != 0 {
		t.Errorf("ipcs after ipcrm -m and -M: %+v", objs)
	}
}
