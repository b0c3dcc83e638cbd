package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/smpc-cluster/smpc"
)

// tcpSink serves TCP on --port until killed: it reads each connection to
// its end and closes it. A transfer measures throughput; a connection
// closed at once measures the rate of new connections.
func tcpSink(fs *flag.FlagSet, args []string) error {
	port := fs.Int("port", 0, "port to listen on")
	bind := fs.String("bind", "", "address to listen on (all by default)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	return serveConns(*bind, *port, func(c net.Conn) {
		buf := buffers.Get().(*[]byte)
		drainInto(c, *buf, -1)
		buffers.Put(buf)
		c.Close()
	})
}

// serveConns listens for TCP on bind:port and serves each connection with
// handle, in a goroutine of its own, until the listener fails.
func serveConns(bind string, port int, handle func(net.Conn)) error {
	l, err := net.Listen("tcp", net.JoinHostPort(bind, strconv.Itoa(port)))
	if err != nil {
		return err
	}
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go handle(c)
	}
}

// readFile reads --bytes of --path (or to its end) in 1 MiB reads.
func readFile(fs *flag.FlagSet, args []string) error {
	path := fs.String("path", "", "file or device to read")
	n := fs.Int64("bytes", 64<<20, "bytes to read")
	if err := fs.Parse(args); err != nil {
		return err
	}
	f, err := os.Open(*path)
	if err != nil {
		return err
	}
	defer f.Close()
	start := time.Now()
	got, err := drainInto(f, make([]byte, 1<<20), *n)
	if err != nil {
		return err
	}
	report(got, time.Since(start))
	return nil
}

// buffers are the sink's read buffers: a connection that closes at once
// must not cost an allocation of 1 MiB.
var buffers = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// drainInto reads r to its end, or limit bytes if limit >= 0, in reads of
// len(buf) bytes. (io.Copy to io.Discard would read in io.Discard's own
// 8 KiB pieces, whatever buffer it is given.)
func drainInto(r io.Reader, buf []byte, limit int64) (int64, error) {
	var got int64
	for limit < 0 || got < limit {
		want := buf
		if limit >= 0 && limit-got < int64(len(buf)) {
			want = buf[:limit-got]
		}
		n, err := r.Read(want)
		got += int64(n)
		if err == io.EOF {
			return got, nil
		}
		if err != nil {
			return got, err
		}
	}
	return got, nil
}

// benchPort is where the network benchmarks' servers listen: the OSlet's
// on the cluster's port, the host's own on the next.
const benchPort = 47311

// Network measures the forwarding layer from the host: a large transfer
// and a run of new short connections to a server on another OSlet through
// the cluster's port on 127.0.0.1, and to one bound to that OSlet's own
// loopback through its relay, beside the same server run on the host and
// reached directly on its loopback.
func (r *Runner) Network(ctx context.Context, bytes int64, d time.Duration) ([]Result, error) {
	if r.Client.Self() != 0 {
		return nil, errors.New("bench network: run it on the host: it measures the cluster's face from outside")
	}
	a, b, err := r.pair()
	if err != nil {
		return nil, err
	}
	cmd := r.Client.Command(r.Binary, "bench-helper", "tcp-sink", "--port", strconv.Itoa(benchPort))
	cmd.OSlet, cmd.Detach = b, true
	if err := cmd.Start(ctx); err != nil {
		return nil, fmt.Errorf("bench network: server on oslet %d: %w", b, err)
	}
	defer r.Client.Signal(context.Background(), cmd.PID, syscall.SIGKILL)
	loopback := r.Client.Command(r.Binary, "bench-helper", "tcp-sink", "--bind", "127.0.0.1", "--port", strconv.Itoa(benchPort+2))
	loopback.OSlet, loopback.Detach = b, true
	if err := loopback.Start(ctx); err != nil {
		return nil, fmt.Errorf("bench network: loopback server on oslet %d: %w", b, err)
	}
	defer r.Client.Signal(context.Background(), loopback.PID, syscall.SIGKILL)
	replier := r.Client.Command(r.Binary, "bench-helper", "tcp-reply", "--port", strconv.Itoa(benchPort+3), "--size", strconv.Itoa(requestSize))
	replier.OSlet, replier.Detach = b, true
	if err := replier.Start(ctx); err != nil {
		return nil, fmt.Errorf("bench network: request server on oslet %d: %w", b, err)
	}
	defer r.Client.Signal(context.Background(), replier.PID, syscall.SIGKILL)
	cpus, err := r.cpusOf(ctx, b, a)
	if err != nil {
		return nil, err
	}
	// The host's servers run on the same CPUs as the OSlet's.
	for _, server := range [][]string{
		{"tcp-sink", "--port", strconv.Itoa(benchPort + 1)},
		{"tcp-reply", "--port", strconv.Itoa(benchPort + 4), "--size", strconv.Itoa(requestSize)},
	} {
		host := exec.Command(r.Binary, append([]string{"bench-helper", "--cpus", cpus[0]}, server...)...)
		if err := host.Start(); err != nil {
			return nil, fmt.Errorf("bench network: %s on the host: %w", server[0], err)
		}
		defer func() { host.Process.Kill(); host.Wait() }()
	}
	for _, port := range []int{benchPort, benchPort + 2, benchPort + 3} {
		if err := r.waitForward(port, b); err != nil {
			return nil, err
		}
	}
	cluster, direct, relayed := fmt.Sprintf("127.0.0.1:%d", benchPort), fmt.Sprintf("127.0.0.1:%d", benchPort+1), fmt.Sprintf("127.0.0.1:%d", benchPort+2)
	for _, addr := range []string{direct, fmt.Sprintf("127.0.0.1:%d", benchPort+4)} {
		if err := waitListen(addr); err != nil {
			return nil, err
		}
	}
	ipv6, err := r.hasIPv6(ctx)
	if err != nil {
		return nil, err
	}
	type side struct {
		addr       string
		rate, conn *float64 // conn nil: a transfer alone
	}
	// The clients run on the other OSlet's CPUs, for either server: where
	// the scheduler puts a client, beside its server or not, changes a
	// transfer by half.
	var fwdRate, dirRate, fwdConn, dirConn, relayRate, relayConn, fwdRate6, dirRate6 float64
	sides := []side{{cluster, &fwdRate, &fwdConn}, {direct, &dirRate, &dirConn}, {relayed, &relayRate, &relayConn}}
	if ipv6 {
		// The same servers (they listen on both families) through the
		// host's ::1.
		sides = append(sides, side{fmt.Sprintf("[::1]:%d", benchPort), &fwdRate6, nil}, side{fmt.Sprintf("[::1]:%d", benchPort+1), &dirRate6, nil})
	}
	for i := 0; i < Reps; i++ {
		for _, side := range sides {
			count, ns, err := r.helperPinned(ctx, cpus[1], "tcp-send", "--addr", side.addr, "--bytes", strconv.FormatInt(bytes, 10))
			if err != nil {
				return nil, fmt.Errorf("bench network: transfer to %s: %w", side.addr, err)
			}
			*side.rate = max(*side.rate, count/1e6/(ns/1e9))
			if side.conn == nil {
				continue
			}
			count, ns, err = r.helperPinned(ctx, cpus[1], "tcp-connect", "--addr", side.addr, "--for", d.String())
			if err != nil {
				return nil, fmt.Errorf("bench network: connections to %s: %w", side.addr, err)
			}
			*side.conn = max(*side.conn, count/(ns/1e9))
		}
	}
	// Small requests on one connection, as a web server's keep-alive
	// clients make them: from the host and from the other OSlet through
	// the cluster's localhost, beside the same two processes on the host's
	// loopback, on the same CPUs (what one machine would give them).
	var hostReqs, osletReqs, nativeReqs float64
	for i := 0; i < Reps; i++ {
		for _, side := range []struct {
			oslet int // 0: the host, pinned to the other OSlet's CPUs
			addr  string
			rate  *float64
		}{
			{0, fmt.Sprintf("127.0.0.1:%d", benchPort+3), &hostReqs},
			{a, fmt.Sprintf("localhost:%d", benchPort+3), &osletReqs},
			{0, fmt.Sprintf("127.0.0.1:%d", benchPort+4), &nativeReqs},
		} {
			args := []string{"tcp-requests", "--addr", side.addr, "--size", strconv.Itoa(requestSize), "--for", d.String()}
			var count, ns float64
			var err error
			if side.oslet == 0 {
				count, ns, err = r.helperPinned(ctx, cpus[1], args...)
			} else {
				count, ns, err = r.helperOn(ctx, side.oslet, args...)
			}
			if err != nil {
				return nil, fmt.Errorf("bench network: requests to %s: %w", side.addr, err)
			}
			*side.rate = max(*side.rate, count/(ns/1e9))
		}
	}
	// From another OSlet: through the cluster's face (smpc-cluster) beside
	// straight to the server's OSlet (oslet-B in every OSlet's /etc/hosts).
	var faceRate, toRate, faceConn, toConn float64
	face, straight := fmt.Sprintf("smpc-cluster:%d", benchPort), fmt.Sprintf("oslet-%d:%d", b, benchPort)
	for i := 0; i < Reps; i++ {
		for _, side := range []struct {
			addr       string
			rate, conn *float64
		}{{face, &faceRate, &faceConn}, {straight, &toRate, &toConn}} {
			count, ns, err := r.helperOn(ctx, a, "tcp-send", "--addr", side.addr, "--bytes", strconv.FormatInt(bytes, 10))
			if err != nil {
				return nil, fmt.Errorf("bench network: transfer from oslet %d to %s: %w", a, side.addr, err)
			}
			*side.rate = max(*side.rate, count/1e6/(ns/1e9))
			count, ns, err = r.helperOn(ctx, a, "tcp-connect", "--addr", side.addr, "--for", d.String())
			if err != nil {
				return nil, fmt.Errorf("bench network: connections from oslet %d to %s: %w", a, side.addr, err)
			}
			*side.conn = max(*side.conn, count/(ns/1e9))
		}
	}
	results := []Result{
		compare("net-oslet-face-throughput",
			Measure{fmt.Sprintf("TCP transfer from oslet %d to oslet %d's server through smpc-cluster", a, b), faceRate, "MB/s"},
			Measure{fmt.Sprintf("the same, straight to oslet-%d", b), toRate, "MB/s"}, 0.95),
		compare("net-oslet-face-connect",
			Measure{fmt.Sprintf("new TCP connections from oslet %d through smpc-cluster", a), faceConn, "conn/s"},
			Measure{fmt.Sprintf("the same, straight to oslet-%d", b), toConn, "conn/s"}, 0.9),
		compare("net-throughput",
			Measure{fmt.Sprintf("TCP transfer from CPUs %s to oslet %d through the cluster's port on 127.0.0.1", cpus[1], b), fwdRate, "MB/s"},
			Measure{fmt.Sprintf("the same server on the host, CPUs %s, on its loopback", cpus[0]), dirRate, "MB/s"}, 0.95),
		compare("net-requests",
			Measure{fmt.Sprintf("%d-byte requests and replies on one connection, from CPUs %s to oslet %d through 127.0.0.1", requestSize, cpus[1], b), hostReqs, "req/s"},
			Measure{fmt.Sprintf("the same server on the host, CPUs %s, on its loopback", cpus[0]), nativeReqs, "req/s"}, 0.9),
		compare("net-oslet-requests",
			Measure{fmt.Sprintf("the same from oslet %d to oslet %d through localhost", a, b), osletReqs, "req/s"},
			Measure{fmt.Sprintf("the host's pair on CPUs %s and %s, on its loopback", cpus[1], cpus[0]), nativeReqs, "req/s"}, 0.9),
		compare("net-connect",
			Measure{fmt.Sprintf("new TCP connections to oslet %d through the cluster's port", b), fwdConn, "conn/s"},
			Measure{"new TCP connections to the host's own server", dirConn, "conn/s"}, 0.9),
		// A relay joins two connections in the boot process: each byte
		// crosses two stacks, and each connection is two.
		compare("net-loopback-relay-throughput",
			Measure{fmt.Sprintf("TCP transfer to a server bound to oslet %d's 127.0.0.1, through its relay", b), relayRate, "MB/s"},
			Measure{"the host's own server on its loopback", dirRate, "MB/s"}, 0.5),
		compare("net-loopback-relay-connect",
			Measure{fmt.Sprintf("new TCP connections to oslet %d's loopback server through its relay", b), relayConn, "conn/s"},
			Measure{"new TCP connections to the host's own server", dirConn, "conn/s"}, 0.5),
	}
	if ipv6 {
		results = append(results, compare("net-throughput6",
			Measure{fmt.Sprintf("TCP transfer from CPUs %s to oslet %d through the cluster's port on ::1", cpus[1], b), fwdRate6, "MB/s"},
			Measure{fmt.Sprintf("the same server on the host, CPUs %s, on its ::1", cpus[0]), dirRate6, "MB/s"}, 0.95))
	}
	return results, nil
}

// hasIPv6 says whether the cluster has IPv6 addresses (not booted with
// --subnet6 none, on a kernel that runs IPv6).
func (r *Runner) hasIPv6(ctx context.Context) (bool, error) {
	st, err := r.Client.Status(ctx)
	if err != nil {
		return false, fmt.Errorf("bench network: %w", err)
	}
	for _, o := range st {
		if o.Address6 != "" {
			return true, nil
		}
	}
	return false, nil
}

// forwardWait bounds the wait for a server's forward. It is not measured:
// a forward follows its listener within a scan, but a new server's start
// takes seconds on an emulated machine.
const forwardWait = 10 * time.Second

func (r *Runner) waitForward(port, k int) error {
	deadline := time.Now().Add(forwardWait)
	for time.Now().Before(deadline) {
		ports, err := r.Client.Ports()
		if err != nil {
			return fmt.Errorf("bench network: %w", err)
		}
		for _, p := range ports {
			if int(p.Port) == port && p.OSlet == k && p.Forwarded {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("bench network: port %d was not forwarded to oslet %d within %v (is it taken?)", port, k, forwardWait)
}

func waitListen(addr string) error {
	deadline := time.Now().Add(3 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bench network: %s does not answer: %w", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tcpSend is the helper 'tcp-send --addr A --bytes N': it sends N bytes on
// one connection to A and reports the bytes and the time until the server
// has read them all.
func tcpSend(fs *flag.FlagSet, args []string) error {
	addr := fs.String("addr", "", "server address")
	n := fs.Int64("bytes", 256<<20, "bytes to send")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := net.Dial("tcp", *addr)
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 1<<20)
	start := time.Now()
	for sent := int64(0); sent < *n; sent += int64(len(buf)) {
		if _, err := c.Write(buf); err != nil {
			return err
		}
	}
	c.(*net.TCPConn).CloseWrite()
	io.Copy(io.Discard, c) // the server closes once it has read everything
	report(*n, time.Since(start))
	return nil
}

// tcpConnect is the helper 'tcp-connect --addr A --for D': it opens and
// closes connections to A for D and reports how many.
func tcpConnect(fs *flag.FlagSet, args []string) error {
	addr := fs.String("addr", "", "server address")
	d := fs.Duration("for", DefaultLoopTime, "how long to connect")
	if err := fs.Parse(args); err != nil {
		return err
	}
	return timedLoop(*d, func() (int64, error) {
		c, err := net.Dial("tcp", *addr)
		if err != nil {
			return 0, err
		}
		c.(*net.TCPConn).SetLinger(0) // no TIME_WAIT pile-up to skew later runs
		c.Close()
		return 1, nil
	})
}

// requestSize is the size of a request and of its reply in the small
// requests benchmark: a page, as a small web request or a cache's value.
const requestSize = 4096

// tcpReply serves TCP on --port until killed: on each connection it reads
// requests of --size bytes and answers each with --size bytes.
func tcpReply(fs *flag.FlagSet, args []string) error {
	port := fs.Int("port", 0, "port to listen on")
	bind := fs.String("bind", "", "address to listen on (all by default)")
	size := fs.Int("size", requestSize, "bytes in a request and in its reply")
	if err := fs.Parse(args); err != nil {
		return err
	}
	return serveConns(*bind, *port, func(c net.Conn) {
		defer c.Close()
		buf := make([]byte, *size)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	})
}

// tcpRequests is the helper 'tcp-requests --addr A --size N --for D': on
// one connection to A it sends requests of N bytes and reads each reply of
// N bytes, for D, and reports how many.
func tcpRequests(fs *flag.FlagSet, args []string) error {
	addr := fs.String("addr", "", "server address")
	size := fs.Int("size", requestSize, "bytes in a request and in its reply")
	d := fs.Duration("for", DefaultLoopTime, "how long to send requests")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := net.Dial("tcp", *addr)
	if err != nil {
		return err
	}
	defer c.Close()
	req, reply := make([]byte, *size), make([]byte, *size)
	return timedLoop(*d, func() (int64, error) {
		if _, err := c.Write(req); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(c, reply); err != nil {
			return 0, err
		}
		return 1, nil
	})
}

// ErrNoDevice says that DeviceRead found no block device to read.
var ErrNoDevice = errors.New("bench device: no OSlet has a block device it can read (give one with smpc boot --device K=NAME)")

// DeviceRead reads a device of one OSlet from another through /rdev, beside
// reading it on its own OSlet from its /dev: once by a process with direct
// device opens, which holds the owner's own descriptor (rdev-read), and
// once through the init's FUSE files, the path of every other process
// (rdev-read-fuse). It also sets the open a process with direct device
// opens pays for beside a plain one (rdev-open-trap). It takes the first
// block device that its owner can open.
func (r *Runner) DeviceRead(ctx context.Context, bytes int64, loopTime time.Duration) ([]Result, error) {
	devs, _, err := r.Client.Devices(ctx)
	if err != nil {
		return nil, fmt.Errorf("bench device: %w", err)
	}
	var dev *smpc.Device
	var held *os.File
	for i := range devs {
		if devs[i].Type != "block" || devs[i].Size == 0 {
			continue
		}
		// Only a device its owner can open will do (a host may keep even
		// root from its disks).
		if f, err := r.Client.OpenDevice(ctx, devs[i].OSlet, devs[i].Name, false); err == nil {
			dev, held = &devs[i], f
			break
		}
	}
	if dev == nil {
		return nil, ErrNoDevice
	}
	// The kernel drops a block device's page cache when its last opener
	// closes it, and then every read goes down to the driver (a loop
	// device's worker, on another CPU). Held open, every read of either
	// side comes from the device's one page cache: the figures compare the
	// paths, not the driver.
	defer held.Close()
	owner := dev.OSlet
	reader := 0
	for _, k := range r.Client.OSlets() {
		if k != owner {
			reader = k
			break
		}
	}
	if reader == 0 {
		return nil, errors.New("bench device: needs a second OSlet")
	}
	n := strconv.FormatInt(min(bytes, dev.Size), 10)
	remote := []string{"read-file", "--path", fmt.Sprintf("/rdev/%d/%s", owner, dev.Name), "--bytes", n}
	local := []string{"read-file", "--path", "/dev/" + dev.Name, "--bytes", n}
	var direct, fuse, own float64
	// best keeps the best rate, in units per second, of the runs.
	best := func(v *float64, k int, trap bool, args []string) error {
		count, ns, err := r.helperOnWith(ctx, k, trap, args...)
		if err != nil {
			return fmt.Errorf("bench device: oslet %d: %w", k, err)
		}
		*v = max(*v, count/(ns/1e9))
		return nil
	}
	// The best of 2*Reps runs of each side (the first fills the page
	// cache): a run is short, and the two sides run on different CPUs.
	for i := 0; i < 2*Reps; i++ {
		if err := best(&direct, reader, true, remote); err != nil {
			return nil, err
		}
		if err := best(&fuse, reader, false, remote); err != nil {
			return nil, err
		}
		if err := best(&own, owner, false, local); err != nil {
			return nil, err
		}
	}
	var trapped, plain float64
	openLoop := []string{"loop", "open", "--for", loopTime.String()}
	for i := 0; i < LoopReps; i++ {
		if err := best(&trapped, reader, true, openLoop); err != nil {
			return nil, err
		}
		if err := best(&plain, reader, false, openLoop); err != nil {
			return nil, err
		}
	}
	ownMeasure := Measure{fmt.Sprintf("read /dev/%s on oslet %d, its owner", dev.Name, owner), own / 1e6, "MB/s"}
	what := fmt.Sprintf("read /rdev/%d/%s on oslet %d, 1 MiB reads", owner, dev.Name, reader)
	return []Result{
		compare("rdev-read", Measure{what + ", direct device opens", direct / 1e6, "MB/s"}, ownMeasure, 0.95),
		compare("rdev-read-fuse", Measure{what + ", through the FUSE files", fuse / 1e6, "MB/s"}, ownMeasure, 0),
		compare("rdev-open-trap",
			Measure{fmt.Sprintf("open+close /dev/null on oslet %d, direct device opens", reader), trapped, "opens/s"},
			Measure{"the same, a plain process", plain, "opens/s"}, 0),
	}, nil
}
