package replicatest

import (
	"errors"
	"flag"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/syncd/syncd/crdt"
)

var (
	seeds    = flag.Int("seeds", defaultSeeds, "number of seeds TestSim runs (100000 for a long run)")
	seed     = flag.Uint64("seed", 0, "run only this seed (replay a failure); with -v, print its trace")
	first    = flag.Uint64("sim.first", 1, "first seed TestSim runs")
	maxFails = flag.Int("sim.maxfails", 3, "stop TestSim after this many failing seeds")
	traceLen = flag.Int("sim.trace", 200, "how many of its last events a failing seed shows")
)

// TestSim plays -seeds histories of the default deployment (5 regions, 20
// devices, 2,000 ops, 20% drops, 30% duplicates, partitions and crashes)
// and fails with the seed and trace of any that does not converge to the
// model's state.
func TestSim(t *testing.T) {
	cfg := DefaultConfig()
	cfg.TraceLen = *traceLen
	if *seed != 0 {
		res, err := cfg.Run(*seed)
		if err != nil {
			t.Fatal(err)
		}
		if testing.Verbose() {
			for _, l := range res.Trace {
				t.Log(l)
			}
		}
		t.Logf("seed %d converged: %s", *seed, summary(res))
		return
	}
	n := *seeds
	if testing.Short() {
		n = min(n, 50)
	}
	// The simulator allocates a lot of short-lived state; trading memory
	// for less collection keeps the default run well inside its budget.
	defer debug.SetGCPercent(debug.SetGCPercent(400))

	start := time.Now()
	var (
		next     atomic.Uint64
		failed   atomic.Int64
		mu       sync.Mutex
		failures []*Failure
		total    Result
	)
	next.Store(*first)
	var wg sync.WaitGroup
	for w := 0; w < runtime.GOMAXPROCS(0); w++ {
		wg.Go(func() {
			for {
				s := next.Add(1) - 1
				if s >= *first+uint64(n) || failed.Load() >= int64(*maxFails) {
					return
				}
				res, err := cfg.Run(s)
				mu.Lock()
				if f := (*Failure)(nil); errors.As(err, &f) {
					failed.Add(1)
					failures = append(failures, f)
				} else if err != nil {
					failures = append(failures, &Failure{Seed: s, Err: err})
				}
				add(&total, res)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	slices.SortFunc(failures, func(a, b *Failure) int { return int(a.Seed) - int(b.Seed) })
	for _, f := range failures {
		t.Error(f)
	}
	el := time.Since(start)
	t.Logf("%d seeds in %v (%v per seed on %d workers): %s", n, el.Round(time.Millisecond),
		(el / time.Duration(max(n, 1))).Round(time.Microsecond), runtime.GOMAXPROCS(0), summary(total))
	if len(failures) > 0 {
		var ss []string
		for _, f := range failures {
			ss = append(ss, f.Error()[:strings.IndexByte(f.Error(), ':')])
		}
		t.Fatalf("%d failing: %s", len(failures), strings.Join(ss, ", "))
	}
}

func add(t *Result, r Result) {
	t.Ops += r.Ops
	t.Refused += r.Refused
	t.Schemaless += r.Schemaless
	t.Lost += r.Lost
	t.Changes += r.Changes
	t.Sent += r.Sent
	t.Dropped += r.Dropped
	t.Duplicated += r.Duplicated
	t.Delivered += r.Delivered
	t.Carried += r.Carried
	t.Crashes += r.Crashes
	t.SkewRefusals += r.SkewRefusals
	t.MidReadyCrashes += r.MidReadyCrashes
	t.UnsentCrashes += r.UnsentCrashes
	t.Partitions += r.Partitions
	t.Failovers += r.Failovers
	t.Rounds = max(t.Rounds, r.Rounds)
	t.MaxQueue = max(t.MaxQueue, r.MaxQueue)
}

func summary(r Result) string {
	return strings.Join([]string{
		itoa(r.Ops) + " ops (" + itoa(r.Schemaless) + " before the writer had the schema, " + itoa(r.Refused) + " refused, " + itoa(r.Lost) + " lost in crashes)",
		itoa(r.Changes) + " durable changes",
		itoa(r.Sent) + " messages (" + itoa(r.Dropped) + " dropped, " + itoa(r.Duplicated) + " duplicated) carrying " + itoa(r.Carried) + " changes",
		itoa(r.Crashes) + " crashes (" + itoa(r.MidReadyCrashes) + " between Ready and Save, " + itoa(r.UnsentCrashes) + " between Save and send)",
		itoa(r.Partitions) + " partitions",
		itoa(r.SkewRefusals) + " refusals of a clock too far ahead",
		itoa(r.Failovers) + " failovers",
		"max " + itoa(r.Rounds) + " rounds to settle",
	}, ", ")
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestSimCalm is the liveness property: without partitions, drops or
// crashes, whatever else happens, the deployment settles within a few
// rounds of ticks once the random phase ends.
func TestSimCalm(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		cfg := Config{
			Regions:  rapid.IntRange(1, 5).Draw(t, "regions"),
			Devices:  rapid.IntRange(0, 8).Draw(t, "devices"),
			Ops:      rapid.IntRange(0, 400).Draw(t, "ops"),
			Dup:      rapid.Float64Range(0, 0.3).Draw(t, "dup"),
			Docs:     rapid.IntRange(1, 4).Draw(t, "docs"),
			PageSize: rapid.IntRange(1, 64).Draw(t, "page"),
			// Down to a retry every tick: a catch-up outlives it, and
			// answers to the requests it replaced still arrive.
			RetryTicks: rapid.IntRange(1, 8).Draw(t, "retry"),
		}
		res, err := cfg.Run(rapid.Uint64().Draw(t, "seed"))
		if err != nil {
			t.Fatal(err)
		}
		if res.RegionRounds > calmRounds || res.Rounds-res.RegionRounds > calmRounds {
			t.Fatalf("regions settled in %d rounds, devices in %d more, want at most %d each",
				res.RegionRounds, res.Rounds-res.RegionRounds, calmRounds)
		}
	})
}

// TestSimCalmChainsCatchUps is the case that found a region catching up
// from one peer per heartbeat: five regions, each ahead of the others in
// its own way, took three rounds until a finished catch-up went on to the
// next peer still ahead.
func TestSimCalmChainsCatchUps(t *testing.T) {
	cfg := Config{Regions: 5, Ops: 64, Dup: 0.1474609375, Docs: 4, PageSize: 52}
	res, err := cfg.Run(0x226)
	if err != nil {
		t.Fatal(err)
	}
	if res.RegionRounds > calmRounds {
		t.Fatalf("regions settled in %d rounds, want at most %d", res.RegionRounds, calmRounds)
	}
}

// calmRounds bounds each stage of quiescence (regions alone, then with the
// devices): round 1 delivers every write, push and sync answer, and pages
// follow one another within a round, so most stages settle in it. A batch
// reordered before the sync answer it continues is dropped as a gap while
// that sync is in flight, and nothing asks again until the next heartbeat:
// round 2, where the sync completes. 3,000 rapid cases never needed a
// third.
const calmRounds = 2

func TestSimDeterministic(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Ops = 500
	for _, s := range []uint64{1, 2, 3} {
		a, err := cfg.Run(s)
		if err != nil {
			t.Fatal(err)
		}
		b, err := cfg.Run(s)
		if err != nil {
			t.Fatal(err)
		}
		if a.Digest != b.Digest || !slices.Equal(a.Trace, b.Trace) {
			t.Fatalf("seed %d played twice gave two histories:\n%s\n%s", s, a.Digest, b.Digest)
		}
	}
}

// TestCheckerBites makes sure the checks can fail: each case tampers with
// a settled deployment, or with the model, the way a core bug would, and
// the check must say so.
func TestCheckerBites(t *testing.T) {
	cases := []struct {
		name   string
		tamper func(s *sim) bool
		want   string
	}{
		{"one replica loses a sibling", func(s *sim) bool {
			f := anyField(s.nodes[len(s.nodes)-1], func(f *crdt.Field) bool { return len(f.Reg().Sibs) > 1 })
			if f == nil {
				return false
			}
			st := f.State()
			st.Reg.Sibs = st.Reg.Sibs[1:]
			*f = *st.Field()
			return true
		}, "replicas diverge"},
		{"every replica counts one too many", func(s *sim) bool {
			ok := false
			for _, n := range s.nodes {
				f := anyField(n, func(f *crdt.Field) bool { return f.Ctr() != nil && len(f.Ctr().Parts) > 0 })
				if f != nil {
					f.Ctr().Parts[0].Total++
					ok = true
				}
			}
			return ok
		}, "differs from the model"},
		{"a durable change is forgotten by the model", func(s *sim) bool {
			c := s.model.order[len(s.model.order)-1]
			delete(s.model.byDot, c.Dot())
			s.model.order = s.model.order[:len(s.model.order)-1]
			return true
		}, "no origin made durable"},
		{"a lost write shows up in a store", func(s *sim) bool {
			n := s.nodes[0]
			n.st.Dots.Add(crdt.Dot{Replica: n.id, Seq: 1 << 40})
			return true
		}, "no origin made durable"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for seed := uint64(1); seed < 20; seed++ {
				cfg := DefaultConfig()
				cfg.Ops = 300
				cfg.fill()
				s := newSim(cfg, seed)
				if err := s.play(); err != nil {
					t.Fatal(err)
				}
				if err := s.check(); err != nil {
					t.Fatalf("seed %d before tampering: %v", seed, err)
				}
				if !tc.tamper(s) {
					continue
				}
				err := s.check()
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("after tampering the check says %v, want an error containing %q", err, tc.want)
				}
				return
			}
			t.Fatal("no seed had anything to tamper with")
		})
	}
}

// anyField returns a field state of n's store, in a stable order, that
// satisfies ok. The tampering tests modify it in place.
func anyField(n *node, ok func(*crdt.Field) bool) *crdt.Field {
	var keys []crdt.DocKey
	for _, k := range n.st.DocKeys() {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b crdt.DocKey) int { return strings.Compare(a.String(), b.String()) })
	for _, k := range keys {
		names := make([]string, 0)
		for name := range n.st.DocFields(k) {
			names = append(names, name)
		}
		slices.Sort(names)
		for _, name := range names {
			if f := n.st.DocFields(k)[name]; ok(f) {
				return f
			}
		}
	}
	return nil
}

// TestSimRetriesDoNotMultiplyCatchUps: a catch-up that outlives the retry
// period is asked for again, and the answers to the replaced request still
// arrive. Followed too, they ran a second catch-up beside the first, and
// one more for every retry: with a retry every tick, replicas exchanged
// 3 to 4 times the messages of the same history with a retry every ten.
// Only the answer to the latest request may lead on.
func TestSimRetriesDoNotMultiplyCatchUps(t *testing.T) {
	cfg := Config{Regions: 2, Devices: 4, Ops: 300, Docs: 4, PageSize: 1}
	for seed := uint64(1); seed <= 3; seed++ {
		var delivered [2]int
		for i, retry := range []int{1, 10} {
			cfg.RetryTicks = retry
			res, err := cfg.Run(seed)
			if err != nil {
				t.Fatal(err)
			}
			delivered[i] = res.Delivered
		}
		if delivered[0] > 2*delivered[1] {
			t.Errorf("seed %d: %d messages with a retry every tick, %d with one every ten ticks: catch-ups multiply",
				seed, delivered[0], delivered[1])
		}
	}
}

// TestSimFollow plays the default deployment with every third device
// following only one of two collections, some of them later following
// both (Config.Follow): filtered pages and live batches, and a vector
// reset that must bring back everything left out. Seed 63 has a page
// filtered for the old collections reach a device that widened (see
// scenario 08_partial_sync).
func TestSimFollow(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Follow = true
	cfg.TraceLen = *traceLen
	n := max(defaultSeeds/10, 3)
	var (
		next    atomic.Uint64
		widened atomic.Int64
		wg      sync.WaitGroup
	)
	next.Store(1)
	for w := 0; w < runtime.GOMAXPROCS(0); w++ {
		wg.Go(func() {
			for s := next.Add(1) - 1; s <= uint64(n) && !t.Failed(); s = next.Add(1) - 1 {
				res, err := cfg.Run(s)
				if err != nil {
					t.Error(err)
					return
				}
				widened.Add(int64(res.Widened))
			}
		})
	}
	wg.Wait()
	if widened.Load() == 0 {
		t.Fatalf("%d seeds and no device widened what it follows", n)
	}
	t.Logf("%d seeds, %d devices widened", n, widened.Load())
}
