// Package gcfloor keeps the Go collector from running on a tiny heap.
//
// A region's Go heap is small: SQLite's page cache lives outside it, and
// what a write or an applied batch allocates is garbage a moment later.
// With the default GOGC=100 the collector's goal is then its 4 MiB
// minimum, and applying batches from another region ran a collection
// every 8 ms, each stopping every goroutine for its stack scan. A floor
// on the goal (a few tens of MiB) makes collections ten times rarer there
// and changes nothing once the live heap is large (a region with
// thousands of devices connected), where the usual percent already gives
// a larger goal.
package gcfloor

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// minHeap is the runtime's own minimum goal at GOGC=100; it scales with
// the percent, so the percent may not exceed floor*100/minHeap or that
// minimum would overshoot the floor.
const minHeap = 4 << 20

// Start keeps the collector's heap goal at floor bytes or more: after
// each collection it sets the GC percent so the next goal is about
// max(floor, what the percent in force before gave). It does nothing and
// returns a no-op when GOGC or GOMEMLIMIT is set, or the collector is
// off: whoever set them has chosen. stop restores the percent.
func Start(floor uint64) (stop func()) {
	if os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" {
		return func() {}
	}
	base := debug.SetGCPercent(100)
	debug.SetGCPercent(base)
	if base <= 0 || floor <= minHeap {
		return func() {}
	}
	t := &tuner{floor: floor, base: base, sample: []metrics.Sample{{Name: "/gc/heap/live:bytes"}}}
	t.adjust()
	t.arm()
	return func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if !t.stopped {
			t.stopped = true
			debug.SetGCPercent(base)
		}
	}
}

type tuner struct {
	floor uint64
	base  int

	mu      sync.Mutex // so that no adjustment lands after stop
	stopped bool
	sample  []metrics.Sample
}

// sentinel is garbage from the moment it is made, so its finalizer runs
// once per collection. It holds a pointer so that it is not placed in a
// tiny-allocator block, whose finalizers can be held back.
type sentinel struct{ t *tuner }

func (t *tuner) arm() {
	runtime.SetFinalizer(&sentinel{t}, func(s *sentinel) {
		if s.t.adjust() {
			s.t.arm()
		}
	})
}

// adjust sets the percent for the live heap now, unless stopped.
func (t *tuner) adjust() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return false
	}
	debug.SetGCPercent(percent(t.floor, t.live(), t.base))
	return true
}

func (t *tuner) live() uint64 {
	metrics.Read(t.sample)
	if t.sample[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return t.sample[0].Value.Uint64()
}

// percent is the GC percent that puts the goal after a collection that
// left live bytes at the floor, but never below base, and never so high
// that the runtime's minimum goal, which grows with it, passes the floor.
func percent(floor, live uint64, base int) int {
	top := int(floor * 100 / minHeap)
	if live == 0 {
		return max(top, base)
	}
	p := int(floor*100/live) - 100
	return max(min(p, top), base)
}
