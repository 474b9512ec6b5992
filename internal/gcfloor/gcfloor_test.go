package gcfloor

import (
	"os"
	"runtime"
	"runtime/debug"
	"testing"
)

func TestPercent(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		floor, live uint64
		base, want  int
	}{
		{32 * mib, 0, 100, 800},         // nothing live yet: the highest the floor allows
		{32 * mib, 1 * mib, 100, 800},   // 3,100 would lift the runtime's minimum to 124 MiB
		{32 * mib, 8 * mib, 100, 300},   // 8 MiB live + 300 % = the floor
		{32 * mib, 16 * mib, 100, 100},  // the percent reaches the floor by itself
		{32 * mib, 200 * mib, 100, 100}, // a large heap: as without the floor
		{32 * mib, 8 * mib, 500, 500},   // a higher base is kept
	} {
		if got := percent(c.floor, c.live, c.base); got != c.want {
			t.Errorf("percent(%d MiB, %d MiB, %d) = %d, want %d", c.floor/mib, c.live/mib, c.base, got, c.want)
		}
	}
}

var sink []byte

// churn allocates n bytes of short-lived garbage and returns how many
// collections ran meanwhile.
func churn(n int) uint32 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := 0; i < n/(64<<10); i++ {
		sink = make([]byte, 64<<10)
	}
	runtime.ReadMemStats(&after)
	return after.NumGC - before.NumGC
}

// TestFloorMakesCollectionsRarer runs the same garbage with and without
// the floor: 256 MiB of it with a live heap of almost nothing takes some
// 60 collections at the default 4 MiB goal, and about 8 with a 32 MiB
// floor.
func TestFloorMakesCollectionsRarer(t *testing.T) {
	if os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" {
		t.Skip("GOGC or GOMEMLIMIT set: the floor stands aside")
	}
	runtime.GC()
	without := churn(256 << 20)
	stop := Start(32 << 20)
	runtime.GC() // the first adjustment after a collection
	with := churn(256 << 20)
	stop()
	if p := debug.SetGCPercent(100); p != 100 {
		t.Errorf("after stop the percent is %d, want 100 back", p)
	}
	t.Logf("collections for 256 MiB of garbage: %d without the floor, %d with", without, with)
	if with > 16 || with*3 > without {
		t.Errorf("with a 32 MiB floor %d collections ran (%d without), want at most 16 and a third as many", with, without)
	}
}
