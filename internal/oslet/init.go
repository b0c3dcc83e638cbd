package oslet

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smpc-cluster/smpc/internal/device"
	"github.com/smpc-cluster/smpc/internal/fabric"
	"github.com/smpc-cluster/smpc/internal/partition"
	"github.com/smpc-cluster/smpc/internal/plan"
	"github.com/smpc-cluster/smpc/internal/shm"
	"github.com/smpc-cluster/smpc/internal/statedir"
	"github.com/smpc-cluster/smpc/internal/trap"
	"github.com/smpc-cluster/smpc/internal/vproc"
)

// Init is one OSlet's init.
type Init struct {
	cfg   *Config
	self  plan.OSlet
	log   *slog.Logger
	table *vproc.Table
	pid   vproc.PID // the init's own PID in the cluster
	cg    partition.StatFiles
	queue *fabric.Queue // the queued lock for peer requests
	// limits bound what the clients of this OSlet can make the init hold.
	limits clientLimits
	waits  atomic.Int64 // waits being served, blocked until a process ends
	// ctx ends when the init stops: the goroutines it started for itself
	// (heartbeats, notices to peers) end with it.
	ctx  context.Context
	stop context.CancelFunc
	// oomAttributed counts the OSlet's OOM kills already told to a waiter
	// (reaped): the reaper alone touches it.
	oomAttributed int
	// spawner forks the processes the init starts, into the OSlet's
	// processes' cgroup.
	spawner *spawner
	shm     *shm.Table // named shared memory homed here
	// direct answers the trapped opens and execs of the processes started
	// with direct device opens or a spreading launch policy.
	direct *trap.Supervisor
	peers  map[int]*peer // fixed at start; each peer guards itself
	rr     atomic.Uint64 // round-robin cursor for spawns from here
	// rrExec is the round-robin cursor for the execs placed from here: a
	// nested 'smpc run' is an exec and then a spawn, and one cursor for
	// both would send every such spawn to the same OSlet.
	rrExec atomic.Uint64
	// loads is what least-loaded placement reads.
	loads *loadBoard

	placersMu sync.Mutex
	placers   map[int]*partition.Placer // by OSlet, opened at its first placement; guarded by placersMu

	mu       sync.Mutex
	attached map[*fabric.Conn][]attachedProc // spawns whose parent is a channel; guarded by mu
	// placements are the processes a spreading policy placed from here, by
	// PID; guarded by mu, pruned as they end.
	placements    map[vproc.PID]fabric.Placement
	placementsCap int // prune placements when it reaches this size; guarded by mu
}

// attachedProc is a process whose parent is a channel of this init.
type attachedProc struct {
	oslet int
	pid   vproc.PID
}

// InitCommand is the hidden smpcd command that runs an init.
const InitCommand = "oslet-init"

// Main runs an init: the process the boot firmware starts in the cluster's
// PID and IPC namespaces and in new mount, UTS and network namespaces, with
// its sync socket as fd 3. It returns only on failure or shutdown.
func Main() error {
	// The init is the subreaper of its OSlet: the orphans of the processes
	// it started come back to it, not to the cluster's PID 1, so that it
	// reaps them and records their ends.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("oslet init: become a subreaper: %w", err)
	}
	syncFile := os.NewFile(3, "smpc-sync")
	in := bufio.NewReader(syncFile)
	enc := json.NewEncoder(syncFile)
	var cfg Config
	line, err := in.ReadBytes('\n')
	if err == nil {
		err = json.Unmarshal(line, &cfg)
	}
	if err != nil {
		return fmt.Errorf("oslet init: read config: %w", err)
	}
	fail := func(err error) error {
		enc.Encode(syncMsg{Error: err.Error()})
		return err
	}
	init, err := newInit(&cfg)
	if err != nil {
		return fail(err)
	}
	// The init sits in its own leaf of the OSlet's cgroup (package
	// partition); what it starts, in the processes' leaf.
	if init.spawner, err = newSpawner(cfg.Cgroup); err != nil {
		return fail(fmt.Errorf("oslet init: %w", err))
	}
	serveRdev := func() error {
		_, err := device.Serve(cfg.Devices, init.openDevice)
		return err
	}
	if err := setupNamespaces(&cfg, serveRdev); err != nil {
		return fail(err)
	}
	// What the init inherited and what its set-up opened (the FUSE
	// server's /dev/fuse among them) must not reach the processes it
	// starts.
	if err := vproc.CloseOnExecAbove(2); err != nil {
		return fail(fmt.Errorf("oslet init: %w", err))
	}
	hostL, clientL, err := init.listen()
	if err != nil {
		return fail(err)
	}
	init.startReaper()
	go init.acceptLoop(hostL, false)
	go init.acceptLoop(clientL, true)
	enc.Encode(syncMsg{Step: StepListening})

	var msg syncMsg
	line, err = in.ReadBytes('\n')
	if err == nil {
		err = json.Unmarshal(line, &msg)
	}
	if err != nil || msg.Step != StepStart {
		return fail(fmt.Errorf("oslet %d: boot did not say start: %v", cfg.Index, err))
	}
	if err := init.connectPeers(); err != nil {
		return fail(err)
	}
	enc.Encode(syncMsg{Step: StepReady})
	syncFile.Close()
	init.log.Info("oslet up", "cpus", init.self.CPUs.String(), "peers", len(init.peers))

	term := make(chan os.Signal, 1)
	signal.Notify(term, unix.SIGTERM, unix.SIGINT)
	<-term
	init.log.Info("oslet shutting down")
	init.stop()
	hostL.Close()
	clientL.Close()
	os.Remove(statedir.HostSocket(cfg.StateDir, cfg.Index))
	init.killAll()
	return nil
}

func newInit(cfg *Config) (*Init, error) {
	self, ok := cfg.Plan.Index(cfg.Index)
	if !ok {
		return nil, fmt.Errorf("oslet %d is not in the plan", cfg.Index)
	}
	// Peer channels park a thread each in recvmsg (see fabric.Conn); give the
	// scheduler enough Ps that those threads never starve the goroutines
	// that the reaper and the client channels wake.
	runtime.GOMAXPROCS(max(runtime.NumCPU(), 2*len(cfg.Plan.OSlets)+4))
	if cfg.PeerSlots <= 0 {
		cfg.PeerSlots = 2 * len(self.CPUs)
	}
	i := &Init{
		cfg:        cfg,
		self:       self,
		log:        slog.New(slog.NewTextHandler(os.Stderr, nil)).With("oslet", cfg.Index),
		table:      vproc.NewTable(vproc.PID(os.Getpid())),
		pid:        vproc.PID(os.Getpid()),
		cg:         cfg.Cgroup,
		queue:      fabric.NewQueue(cfg.PeerSlots),
		limits:     newClientLimits(),
		peers:      map[int]*peer{},
		attached:   map[*fabric.Conn][]attachedProc{},
		placements: map[vproc.PID]fabric.Placement{}, placementsCap: minPlacementsCap,
		placers: map[int]*partition.Placer{},
		shm:     shm.NewTable(cfg.Index, shm.Dir),
	}
	for _, o := range cfg.Plan.OSlets {
		if o.Index != cfg.Index {
			i.peers[o.Index] = &peer{index: o.Index, addr: statedir.HostSocket(cfg.StateDir, o.Index), cpus: len(o.CPUs), wake: make(chan struct{}, 1)}
		}
	}
	cpus := map[int]int{}
	for _, o := range cfg.Plan.OSlets {
		cpus[o.Index] = len(o.CPUs)
	}
	i.ctx, i.stop = context.WithCancel(context.Background())
	i.loads = newLoadBoard(cfg.Cgroups, cpus)
	i.direct = &trap.Supervisor{Devices: cfg.Devices, Open: i.openDevice, Log: i.log, Timeout: time.Minute, Place: i.placeExec}
	return i, nil
}

func (i *Init) listen() (host, client *fabric.Listener, err error) {
	addr := statedir.HostSocket(i.cfg.StateDir, i.cfg.Index)
	os.Remove(addr)
	host, err = fabric.Listen(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("oslet %d: %w", i.cfg.Index, err)
	}
	if i.cfg.Owner != 0 {
		os.Chown(addr, int(i.cfg.Owner), -1)
	}
	client, err = fabric.Listen(statedir.ClientSocket)
	if err != nil {
		host.Close()
		return nil, nil, fmt.Errorf("oslet %d: %w", i.cfg.Index, err)
	}
	return host, client, nil
}

// startReaper reaps every child of the init, its own and the orphans that
// the kernel re-parents to it, so that no zombie is ever left.
func (i *Init) startReaper() {
	go vproc.ReapForever(i.reaped)
}

func (i *Init) acceptLoop(l *fabric.Listener, clients bool) {
	for {
		if clients {
			// A slot for the hello; serveChannel frees it once the hello
			// is in or its time is up.
			i.limits.hellos <- struct{}{}
		}
		fd, err := l.Accept()
		if err != nil {
			if clients {
				<-i.limits.hellos
			}
			if errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) || errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.ENOMEM) {
				// Out of descriptors or memory for now: the connection
				// waits in the backlog, and the init keeps serving.
				i.log.Warn("accept", "err", err)
				time.Sleep(100 * time.Millisecond)
				continue
			}
			return // the listener closed: shutdown
		}
		uid := uint32(0)
		if clients {
			cred, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
			if err != nil || !i.limits.userHellos.TryAcquire(cred.Uid) {
				unix.Close(fd) // gone already, or its user holds too many
				<-i.limits.hellos
				continue
			}
			uid = cred.Uid
		}
		go i.serveChannel(fd, clients, uid)
	}
}
