package oslet

import (
	"sync"
	"time"

	"github.com/smpc-cluster/smpc/internal/partition"
)

// loadBoard is what least-loaded placement reads: the runnable processes of
// every OSlet, counted by this init itself. Every init sees every OSlet's
// processes (the cluster's one /proc) and cgroup, so no peer needs asking
// and no heartbeat's figure goes stale between a build's launches.
type loadBoard struct {
	cgroups map[int]partition.StatFiles
	cpus    map[int]int

	mu       sync.Mutex
	at       time.Time     // when runnable was counted; guarded by mu
	fresh    time.Duration // how long the count serves; guarded by mu
	runnable map[int]int   // by OSlet; guarded by mu
	placed   map[int]int   // launches placed on each OSlet since the count; guarded by mu
}

// loadFresh is how long a count serves at least. Within a burst of launches
// closer than this, the launches placed since the count are added on top,
// so that the burst still spreads. Longer lived counts misled: a waiting
// compiler driver, counted as a launch, sent the next compiler onto a busy
// OSlet.
const loadFresh = time.Millisecond

// countShare bounds the time spent counting: a count reads each process of
// the cluster in /proc (some 25 µs each on the development VM), so a
// cluster of many processes keeps each count for countShare times as long
// as it took, and counting stays a twentieth of the placing init's time
// however many processes run.
const countShare = 20

func newLoadBoard(cgroups map[int]partition.StatFiles, cpus map[int]int) *loadBoard {
	return &loadBoard{cgroups: cgroups, cpus: cpus, runnable: map[int]int{}, placed: map[int]int{}}
}

// countLocked counts again if the count is stale.
func (b *loadBoard) countLocked(skip int) {
	if time.Since(b.at) < b.fresh {
		return
	}
	start := time.Now()
	for k, files := range b.cgroups {
		n := 0
		for _, pid := range files.PIDs() {
			if pid != skip {
				if s, err := readStat(pid); err == nil && s.state == "R" {
					n++
				}
			}
		}
		b.runnable[k] = n
	}
	clear(b.placed)
	b.at = time.Now()
	b.fresh = max(loadFresh, countShare*b.at.Sub(start))
}

// load returns OSlet k's runnable processes per CPU, launches placed since
// the count included. skip is a process not to count (the caller, an init).
func (b *loadBoard) load(k, skip int) float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.countLocked(skip)
	return b.loadLocked(k)
}

func (b *loadBoard) loadLocked(k int) float64 {
	return float64(b.runnable[k]+b.placed[k]) / float64(max(b.cpus[k], 1))
}

// pick returns the least-loaded of candidates, and counts a launch on it.
// A tie goes to stay, where the process already is (no move to pay for),
// then to the lowest index.
func (b *loadBoard) pick(candidates []int, stay, skip int) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.countLocked(skip)
	best := candidates[0]
	for _, k := range candidates[1:] {
		if l, bl := b.loadLocked(k), b.loadLocked(best); l < bl || l == bl && best != stay && (k == stay || k < best) {
			best = k
		}
	}
	b.placed[best]++
	return best
}
