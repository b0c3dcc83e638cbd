package cluster

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc/internal/device"
	"github.com/smpc-cluster/smpc/internal/fabric"
	"github.com/smpc-cluster/smpc/internal/network"
	"github.com/smpc-cluster/smpc/internal/oslet"
	"github.com/smpc-cluster/smpc/internal/partition"
	"github.com/smpc-cluster/smpc/internal/plan"
	"github.com/smpc-cluster/smpc/internal/statedir"
	"github.com/smpc-cluster/smpc/internal/topology"
	"github.com/smpc-cluster/smpc/internal/vproc"
)

// Options are what Boot needs; Boot checks them all before it changes
// anything.
type Options struct {
	StateDir string
	Plan     *plan.Plan
	Name     string // the cluster's hostname; the host's by default
	Owner    uint32 // uid allowed on the host sockets besides root
	Exe      string // smpcd, the binary of the inits and the reaper; this one by default
	// Client is smpc, the binary every process finds on its PATH and the
	// exec stage runs from; smpc beside Exe by default, else Exe itself
	// (smpcd takes every command smpc takes).
	Client string
	Log    *slog.Logger
}

// Cluster is a booted cluster, supervised by the process that booted it.
type Cluster struct {
	state *State
	lock  *os.File
	log   *slog.Logger

	reaper     *exec.Cmd // the cluster's PID 1
	reaperDone chan struct{}
	ns         *Namespaces // the cluster's PID and IPC namespaces
	files      map[int]partition.StatFiles

	mu       sync.Mutex
	inits    map[int]*exec.Cmd // guarded by mu
	cgroups  map[int]*partition.Cgroup
	stopping bool // guarded by mu
	exited   chan int
	done     map[int]chan struct{}

	devices       []device.Device
	forwarder     *network.Forwarder // guarded by mu
	stopForwarder context.CancelFunc
	forwarderDone chan struct{}
}

// GTmpMount is where every OSlet sees the cluster's shared tmpfs (the seed's
// global /tmp). Boot creates the empty directory on the host if it is
// missing and leaves it: it is only a mount point.
const GTmpMount = "/gtmp"

// Boot partitions the machine and starts the OSlets, in this order: check the
// plan and the kernel; take the state dir; mount the shared /gtmp; start the
// cluster's PID 1 in the cluster's PID and IPC namespaces; for every OSlet at
// once, make its cgroup, start its init in those two namespaces and in new
// mount, UTS and network namespaces of its own, move it into the cgroup
// before it does anything, and hand it its boot table; once every init
// listens, let them connect to each other; record the cluster. Any failure
// undoes every step.
func Boot(opts Options) (c *Cluster, retErr error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("boot: smpc boot must run as root (it creates cgroups and namespaces)")
	}
	// The descriptors the shell that ran smpc boot left open must not
	// reach the cluster's PID 1, the inits, or through them any process.
	if err := vproc.CloseOnExecAbove(2); err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	m, err := topology.Detect()
	if err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	if err := opts.Plan.Validate(m); err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	if opts.Exe == "" {
		if opts.Exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("boot: find own binary: %w", err)
		}
	}
	if opts.Client == "" {
		opts.Client = filepath.Join(filepath.Dir(opts.Exe), "smpc")
		if unix.Access(opts.Client, unix.X_OK) != nil {
			opts.Client = opts.Exe
		}
	}
	if opts.Name == "" {
		opts.Name, _ = os.Hostname()
	}
	lock, err := lockStateDir(opts.StateDir, opts.Log)
	if err != nil {
		return nil, err
	}
	c = &Cluster{
		lock: lock, log: opts.Log,
		inits: map[int]*exec.Cmd{}, cgroups: map[int]*partition.Cgroup{},
		exited: make(chan int, len(opts.Plan.OSlets)), done: map[int]chan struct{}{},
		state: &State{Record: statedir.Record{
			Name: opts.Name, StateDir: opts.StateDir, Plan: opts.Plan, Supervisor: os.Getpid(),
			Inits: map[int]int{}, Cgroups: map[int]string{}, Owner: opts.Owner,
			GTmp: filepath.Join(opts.StateDir, "gtmp"), Shm: filepath.Join(opts.StateDir, "shm"),
			Protocol: fmt.Sprintf("%d.%d", fabric.Major, fabric.Minor),
		}},
	}
	defer func() {
		if retErr != nil {
			c.teardown()
		}
	}()
	if err := os.MkdirAll(GTmpMount, 0o755); err != nil {
		return c, fmt.Errorf("boot: create %s mount point: %w", GTmpMount, err)
	}
	for _, m := range []struct{ name, dir string }{{"smpc-gtmp", c.state.GTmp}, {"smpc-shm", c.state.Shm}} {
		if err := mountShared(m.name, m.dir); err != nil {
			return c, fmt.Errorf("boot: %w", err)
		}
	}
	if err := c.startReaper(opts.Exe); err != nil {
		return c, fmt.Errorf("boot: %w", err)
	}
	c.state.Bin, err = installCommand(opts.StateDir, opts.Client)
	if err != nil {
		return c, fmt.Errorf("boot: %w", err)
	}
	id := clusterID(opts.StateDir)
	// Recorded even when placing fails half-way: teardown removes what
	// was made (a systemd scope among it).
	c.state.Cgroup, err = partition.Place(id, c.reaper.Process.Pid)
	if err != nil {
		return c, fmt.Errorf("boot: %w", err)
	}
	var indexes []int
	c.files = map[int]partition.StatFiles{}
	for _, o := range opts.Plan.OSlets {
		group := c.state.Cgroup.OSlet(o.Index)
		c.state.Cgroups[o.Index] = group
		if c.files[o.Index], err = partition.FilesOf(group); err != nil {
			return c, fmt.Errorf("boot: oslet %d: %w", o.Index, err)
		}
		indexes = append(indexes, o.Index)
	}
	if err := c.setupNetwork(id, indexes, &opts); err != nil {
		return c, fmt.Errorf("boot: %w", err)
	}
	if c.devices, err = device.Inventory(opts.Plan, m.Block); err != nil {
		return c, fmt.Errorf("boot: %w", err)
	}
	// Start every init at once: boot time should not grow with N.
	syncs := map[int]*syncChannel{}
	errs := make(chan error, len(opts.Plan.OSlets))
	var smu sync.Mutex
	for _, o := range opts.Plan.OSlets {
		go func() {
			sc, err := c.startInit(o, &opts)
			smu.Lock()
			if sc != nil {
				syncs[o.Index] = sc
			}
			smu.Unlock()
			errs <- err
		}()
	}
	var firstErr error
	for range opts.Plan.OSlets {
		if err := <-errs; err != nil && firstErr == nil {
			firstErr = err
		}
	}
	defer func() {
		for _, sc := range syncs {
			sc.f.Close()
		}
	}()
	if firstErr != nil {
		return c, fmt.Errorf("boot: %w", firstErr)
	}
	// Every stack exists now: wire it to the bridge before any process of
	// the OSlet runs.
	for _, o := range opts.Plan.OSlets {
		if err := network.Attach(c.state.Network, o.Index, c.state.Inits[o.Index], netInterfaces(o.Devices)); err != nil {
			return c, fmt.Errorf("boot: %w", err)
		}
	}
	for _, o := range opts.Plan.OSlets {
		go func() { errs <- syncs[o.Index].step(o.Index, oslet.StepStart, oslet.StepReady) }()
	}
	for range opts.Plan.OSlets {
		if err := <-errs; err != nil && firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		return c, fmt.Errorf("boot: %w", firstErr)
	}
	c.state.Booted = time.Now()
	if err := c.state.write(); err != nil {
		return c, fmt.Errorf("boot: %w", err)
	}
	c.startForwarder()
	return c, nil
}

// setupNetwork makes the cluster's face (bridge, addresses, nftables table)
// and the hosts file every OSlet sees, after checking that the subnet is
// free. The record goes into the state first, so that a failure removes
// whatever part was made.
func (c *Cluster) setupNetwork(id string, indexes []int, opts *Options) error {
	subnet6 := opts.Plan.Subnet6
	if !network.IPv6Available() {
		if subnet6 != "" && subnet6 != network.NoIPv6 {
			return fmt.Errorf("network: subnet6 %s: this kernel runs no IPv6 in new network namespaces (net.ipv6.conf.default.disable_ipv6 is not 0)", subnet6)
		}
		c.log.Info("the cluster has no IPv6: the kernel runs none in new network namespaces")
		subnet6 = network.NoIPv6
	}
	rec, err := network.Plan(id, opts.Plan.Subnet, subnet6, indexes)
	if err != nil {
		return err
	}
	if err := network.CheckFree(rec); err != nil {
		return err
	}
	c.state.Network = rec
	if err := network.Setup(rec); err != nil {
		return err
	}
	hosts, _ := os.ReadFile("/etc/hosts")
	c.state.Hosts = filepath.Join(c.state.StateDir, "hosts")
	if err := os.WriteFile(c.state.Hosts, network.HostsFile(rec, hosts), 0o644); err != nil {
		return fmt.Errorf("network: hosts file: %w", err)
	}
	return nil
}

// netInterfaces picks the network interfaces out of an OSlet's devices.
func netInterfaces(devices []string) []string {
	var names []string
	for _, d := range devices {
		if topology.IsInterface(d) {
			names = append(names, d)
		}
	}
	return names
}

// startForwarder runs the port forwarder until shutdown; it publishes the
// port map in the state dir, where smpc ports reads it.
func (c *Cluster) startForwarder() {
	ctx, cancel := context.WithCancel(context.Background())
	c.stopForwarder, c.forwarderDone = cancel, make(chan struct{})
	path := filepath.Join(c.state.StateDir, statedir.PortsFile)
	f := &network.Forwarder{
		Record:  c.state.Network,
		Inits:   c.liveInits,
		Publish: func(ports []network.Port) error { return network.WritePorts(path, ports) },
		Log:     c.log,
	}
	c.mu.Lock()
	c.forwarder = f
	c.mu.Unlock()
	// The first scan before boot returns: the port map is there, and the
	// loopback redirect in place, once the cluster says it is up.
	if err := f.Scan(); err != nil {
		c.log.Warn("port scan", "err", err)
	}
	go func() {
		defer close(c.forwarderDone)
		f.Run(ctx)
	}()
}

// liveInits maps each OSlet whose init still runs to the init's host PID.
func (c *Cluster) liveInits() map[int]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	live := map[int]int{}
	for k, pid := range c.state.Inits {
		select {
		case <-c.done[k]:
		default:
			live[k] = pid
		}
	}
	return live
}

// State returns the cluster's boot record.
func (c *Cluster) State() *State { return c.state }

type syncChannel struct {
	f  *os.File
	in *bufio.Reader
}

func (s *syncChannel) send(v any) error {
	b, _ := json.Marshal(v)
	_, err := s.f.Write(append(b, '\n'))
	return err
}

func (s *syncChannel) await(k int, step string) error {
	s.f.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := s.in.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("oslet %d: init did not report %s: %w (see its log)", k, step, err)
	}
	var msg struct{ Step, Error string }
	if err := json.Unmarshal(line, &msg); err != nil {
		return fmt.Errorf("oslet %d: bad message from init: %w", k, err)
	}
	if msg.Error != "" {
		return errors.New(msg.Error)
	}
	if msg.Step != step {
		return fmt.Errorf("oslet %d: init reported %q, want %q", k, msg.Step, step)
	}
	return nil
}

func (s *syncChannel) step(k int, send, want string) error {
	if err := s.send(map[string]string{"step": send}); err != nil {
		return fmt.Errorf("oslet %d: %w", k, err)
	}
	return s.await(k, want)
}

// startInit makes OSlet o's cgroup and starts its init, up to "listening".
func (c *Cluster) startInit(o plan.OSlet, opts *Options) (*syncChannel, error) {
	// This goroutine's thread starts the init in the cluster's PID and IPC
	// namespaces, and dies with the goroutine.
	if err := c.ns.EnterForChildren(); err != nil {
		return nil, fmt.Errorf("oslet %d: %w", o.Index, err)
	}
	group := c.state.Cgroups[o.Index]
	cg, err := partition.Create(group, o, opts.Plan.Mems(), device.CgroupRules(o.Index, c.devices))
	if err != nil {
		return nil, fmt.Errorf("oslet %d: %w", o.Index, err)
	}
	c.mu.Lock()
	c.cgroups[o.Index] = cg
	c.mu.Unlock()

	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("oslet %d: sync socket: %w", o.Index, err)
	}
	parentEnd, childEnd := os.NewFile(uintptr(fds[0]), "sync"), os.NewFile(uintptr(fds[1]), "sync")
	defer childEnd.Close()
	logf, err := os.OpenFile(filepath.Join(c.state.StateDir, fmt.Sprintf("oslet-%d.log", o.Index)), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		parentEnd.Close()
		return nil, fmt.Errorf("oslet %d: log: %w", o.Index, err)
	}
	defer logf.Close()
	cmd := exec.Command(opts.Exe, oslet.InitCommand)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "GOTRACEBACK=crash"}
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{childEnd}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWNET,
		Setsid:     true, // terminal signals go to the supervisor, never straight to an OSlet
	}
	if err := cmd.Start(); err != nil {
		parentEnd.Close()
		return nil, fmt.Errorf("oslet %d: start init: %w", o.Index, err)
	}
	c.mu.Lock()
	c.inits[o.Index] = cmd
	c.state.Inits[o.Index] = cmd.Process.Pid
	done := make(chan struct{})
	c.done[o.Index] = done
	c.mu.Unlock()
	go func() {
		err := cmd.Wait()
		close(done)
		c.mu.Lock()
		stopping := c.stopping
		c.mu.Unlock()
		if !stopping {
			// An OSlet that fails ends exactly its own processes, as a
			// failed board would: the rest of the cluster carries on.
			var lost []vproc.PID
			killErr := cg.Kill(func(host int) {
				if pid := vproc.ClusterPID(host); pid > 0 {
					lost = append(lost, vproc.PID(pid))
				}
			})
			if err := vproc.RecordLost(vproc.LostFile(c.state.StateDir), o.Index, lost); err != nil {
				c.log.Warn("record lost processes", "oslet", o.Index, "err", err)
			}
			c.log.Warn("oslet died", "oslet", o.Index, "err", err, "lost", len(lost), "kill", killErr)
			os.Remove(statedir.HostSocket(c.state.StateDir, o.Index))
			c.mu.Lock()
			if c.forwarder != nil {
				c.forwarder.Rescan() // what it held is forwarded no more
			}
			c.mu.Unlock()
			c.exited <- o.Index
		}
	}()
	// The init waits for its config before doing anything, so everything it
	// does is charged to its cgroup.
	if err := cg.AddInit(cmd.Process.Pid); err != nil {
		parentEnd.Close()
		return nil, fmt.Errorf("oslet %d: %w", o.Index, err)
	}
	if err := c.state.Cgroup.Adopt(cmd.Process.Pid); err != nil {
		parentEnd.Close()
		return nil, fmt.Errorf("oslet %d: %w", o.Index, err)
	}
	sc := &syncChannel{f: parentEnd, in: bufio.NewReader(parentEnd)}
	cfg := oslet.Config{Index: o.Index, Cluster: c.state.Name, StateDir: c.state.StateDir, Plan: opts.Plan,
		Cgroup: cg.Stats, Cgroups: c.files, Bin: c.state.Bin, GTmp: c.state.GTmp, Shm: c.state.Shm, Owner: opts.Owner,
		Address: c.state.Network.Addr(o.Index), Address6: c.state.Network.Addr6(o.Index), Hosts: c.state.Hosts,
		Devices: c.devices}
	if err := sc.send(cfg); err != nil {
		parentEnd.Close()
		return nil, fmt.Errorf("oslet %d: send config: %w", o.Index, err)
	}
	if err := sc.await(o.Index, oslet.StepListening); err != nil {
		parentEnd.Close()
		return nil, err
	}
	return sc, nil
}

// startReaper starts the cluster's PID 1 and opens its namespaces.
func (c *Cluster) startReaper(exe string) error {
	logf, err := os.OpenFile(filepath.Join(c.state.StateDir, "reaper.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("reaper log: %w", err)
	}
	defer logf.Close()
	cmd, err := startReaper(exe, logf)
	if err != nil {
		return err
	}
	c.reaper, c.reaperDone = cmd, make(chan struct{})
	c.state.Reaper = cmd.Process.Pid
	go func() {
		cmd.Wait()
		close(c.reaperDone)
	}()
	if c.ns, err = OpenNamespaces(cmd.Process.Pid); err != nil {
		return err
	}
	return nil
}

// installCommand makes the smpc binary available by name to every process
// of the cluster: the inits add the directory it returns to the end of the
// PATH of the processes they start. A symbolic link where the OSlets see
// the binary's path; a copy where they do not (under /tmp, which each
// OSlet has its own of).
func installCommand(stateDir, exe string) (string, error) {
	dir := filepath.Join(stateDir, "bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("install smpc for the OSlets: %w", err)
	}
	dst := filepath.Join(dir, "smpc")
	os.Remove(dst)
	if !strings.HasPrefix(exe, "/tmp/") {
		if err := os.Symlink(exe, dst); err != nil {
			return "", fmt.Errorf("install smpc for the OSlets: %w", err)
		}
		return dir, nil
	}
	if err := os.Link(exe, dst); err == nil {
		return dir, nil
	}
	in, err := os.Open(exe)
	if err != nil {
		return "", fmt.Errorf("install smpc for the OSlets: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return "", fmt.Errorf("install smpc for the OSlets: %w", err)
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("install smpc for the OSlets: %w", err)
	}
	return dir, nil
}

// Exited delivers the index of each OSlet whose init died unexpectedly.
func (c *Cluster) Exited() <-chan int { return c.exited }

// Shutdown stops every OSlet and removes everything Boot made.
func (c *Cluster) Shutdown() error {
	c.mu.Lock()
	c.stopping = true
	c.mu.Unlock()
	return c.teardown()
}

// teardown ends the inits (SIGTERM, then SIGKILL after a grace period), each
// OSlet's processes (its cgroup killed), then the cluster's PID 1, whose
// death ends whatever is left in the cluster's PID namespace; then it removes
// the cgroups, the shared tmpfs, the sockets and the state files.
func (c *Cluster) teardown() error {
	c.mu.Lock()
	c.stopping = true
	inits := map[int]*exec.Cmd{}
	for k, cmd := range c.inits {
		inits[k] = cmd
	}
	c.mu.Unlock()
	if c.stopForwarder != nil {
		c.stopForwarder()
		<-c.forwarderDone
	}
	var errs []error
	if c.state.Network != nil {
		// Before the inits die: an interface dies with its namespace.
		if err := network.ReturnInterfaces(c.state.Network, c.liveInits()); err != nil {
			errs = append(errs, err)
		}
	}
	for _, cmd := range inits {
		cmd.Process.Signal(unix.SIGTERM)
	}
	deadline := time.Now().Add(3 * time.Second)
	for k, cmd := range inits {
		select {
		case <-c.done[k]:
		case <-time.After(time.Until(deadline)):
			cmd.Process.Kill()
			<-c.done[k]
		}
	}
	for _, cg := range c.cgroups {
		if err := cg.Kill(nil); err != nil {
			errs = append(errs, err)
		}
	}
	if c.reaper != nil {
		c.reaper.Process.Kill()
		<-c.reaperDone
	}
	if c.ns != nil {
		c.ns.Close()
	}
	cgroups := make([]*partition.Cgroup, 0, len(c.cgroups))
	for _, cg := range c.cgroups {
		cgroups = append(cgroups, cg)
	}
	if err := removeAll(c.state, cgroups); err != nil {
		errs = append(errs, err)
	}
	c.lock.Close()
	os.Remove(c.state.StateDir) // only if empty: a state dir the user keeps other files in stays
	return errors.Join(errs...)
}

func removeStateFiles(s *State) {
	for _, dir := range []string{s.GTmp, s.Shm} {
		if dir != "" {
			unix.Unmount(dir, unix.MNT_DETACH)
			os.Remove(dir)
		}
	}
	os.RemoveAll(filepath.Join(s.StateDir, "bin"))
	for _, pattern := range []string{"oslet-*.sock", "oslet-*.log", "boot.log", "reaper.log", statedir.RecordFile, statedir.RecordFile + ".new", "lock",
		"hosts", statedir.PortsFile, statedir.PortsFile + ".new", "lost.json", "lost.json.new"} {
		matches, _ := filepath.Glob(filepath.Join(s.StateDir, pattern))
		for _, m := range matches {
			os.Remove(m)
		}
	}
}

func lockStateDir(dir string, log *slog.Logger) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("boot: state dir: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("boot: state dir: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		who := ""
		if s, err := ReadState(dir); err == nil {
			who = fmt.Sprintf(" (booted by pid %d)", s.Supervisor)
		}
		return nil, fmt.Errorf("boot: state dir %s is in use by a running cluster%s; shut it down first or use another --state-dir", dir, who)
	}
	// A cluster that crashed left its record: clean up after it first. What
	// could not be removed is said, and the boot goes on: the new cluster's
	// names are its own.
	if s, err := ReadState(dir); err == nil {
		if err := cleanStale(s); err != nil {
			log.Warn("boot: what a crashed cluster left could not all be removed", "err", err)
		}
	}
	return f, nil
}

// cleanStale removes what a crashed cluster left behind.
func cleanStale(s *State) error {
	var errs []error
	live := map[int]int{}
	for k, pid := range s.Inits {
		if isInit(pid) {
			live[k] = pid
		}
	}
	if s.Network != nil {
		if err := network.ReturnInterfaces(s.Network, live); err != nil {
			errs = append(errs, err)
		}
	}
	for _, pid := range live {
		unix.Kill(pid, unix.SIGKILL)
	}
	if s.Reaper > 0 && isReaper(s.Reaper) {
		unix.Kill(s.Reaper, unix.SIGKILL)
	}
	var cgroups []*partition.Cgroup
	for _, group := range s.Cgroups {
		if !filepath.IsAbs(group) {
			continue // a record of an older smpc, which nested its cgroups under its own
		}
		if cg, err := partition.Load(group); err == nil {
			cgroups = append(cgroups, cg)
		} // else gone already
	}
	if err := removeAll(s, cgroups); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clean up after the cluster on %s: %w", s.StateDir, err)
	}
	return nil
}

// removeAll removes what a boot made, once the cluster's processes are
// stopped: its network, its cgroups and the groups above them that no other
// cluster uses, its mounts and its state files. The one way to remove it,
// whether the cluster stops or a crashed one is cleaned up after: every
// error is reported, and the rest goes on.
func removeAll(s *State, cgroups []*partition.Cgroup) error {
	var errs []error
	if s.Network != nil {
		if err := network.Teardown(s.Network); err != nil {
			errs = append(errs, err)
		}
	}
	for _, cg := range cgroups {
		if err := cg.Destroy(); err != nil {
			errs = append(errs, err)
		}
	}
	if s.Cgroup.Dir != "" {
		if err := partition.RemoveCluster(s.Cgroup); err != nil {
			errs = append(errs, err)
		}
	}
	removeStateFiles(s)
	return errors.Join(errs...)
}

func isInit(pid int) bool { return cmdlineHas(pid, oslet.InitCommand) }

func isReaper(pid int) bool { return cmdlineHas(pid, ReaperCommand) }

func cmdlineHas(pid int, word string) bool { return strings.Contains(vproc.Cmdline(pid), word) }

// mountShared mounts a tmpfs on the host that every OSlet binds in: /gtmp
// and /dev/shm.
func mountShared(name, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("shared tmpfs: %w", err)
	}
	if err := unix.Mount(name, dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777"); err != nil {
		return fmt.Errorf("mount shared tmpfs on %s: %w", dir, err)
	}
	// Private, so that the OSlets' own mounts never propagate back.
	if err := unix.Mount("", dir, "", unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make %s private: %w", dir, err)
	}
	return nil
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// clusterID names a cluster's cgroups after its state dir, so that clusters
// on different state dirs never share a cgroup.
func clusterID(stateDir string) string {
	h := fnv.New32a()
	h.Write([]byte(stateDir))
	base := unsafeChars.ReplaceAllString(filepath.Base(stateDir), "_")
	return fmt.Sprintf("%s-%08x", base, h.Sum32())
}

// RequestShutdown stops the cluster on stateDir: it asks the supervisor to
// stop and waits until it has removed everything, or, if the supervisor
// died, cleans up itself.
func RequestShutdown(stateDir string, timeout time.Duration) error {
	s, err := ReadState(stateDir)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(stateDir, "lock"), os.O_RDWR, 0)
	if err == nil {
		defer f.Close()
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
			// The supervisor is gone: clean up after it here.
			err := cleanStale(s)
			os.Remove(stateDir)
			return err
		}
	}
	if err := unix.Kill(s.Supervisor, unix.SIGTERM); err != nil {
		return fmt.Errorf("shutdown: signal boot process %d: %w", s.Supervisor, err)
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(filepath.Join(stateDir, statedir.RecordFile)); errors.Is(err, os.ErrNotExist) {
			if unix.Kill(s.Supervisor, 0) != nil {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("shutdown: the cluster on %s did not stop within %v", stateDir, timeout)
}
