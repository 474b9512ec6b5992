package gcfloor

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
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

func heapGoal() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/goal:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// TestFloorRaisesTheGoal checks the collector's own heap goal: about
// 4 MiB for this test's tiny heap at GOGC=100, at least the floor once
// a collection has run with it, and back after stop. (Counting
// collections over some garbage would say the same less reliably: with
// the CPUs busy, a collection's marking spans more allocation and fewer
// of them run.)
func TestFloorRaisesTheGoal(t *testing.T) {
	if os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" {
		t.Skip("GOGC or GOMEMLIMIT set: the floor stands aside")
	}
	const floor = 32 << 20
	runtime.GC()
	if g := heapGoal(); g >= floor {
		t.Fatalf("goal without the floor is already %d MiB", g>>20)
	}
	stop := Start(floor)
	defer stop()
	// The floor adjusts after each collection, on the finalizer
	// goroutine: collect until it has.
	var g uint64
	for range 200 {
		runtime.GC()
		time.Sleep(time.Millisecond)
		if g = heapGoal(); g >= floor {
			break
		}
	}
	if g < floor {
		t.Fatalf("goal with a %d MiB floor is %d MiB", floor>>20, g>>20)
	}
	stop()
	if p := debug.SetGCPercent(100); p != 100 {
		t.Errorf("after stop the percent is %d, want 100 back", p)
	}
	runtime.GC()
	if g := heapGoal(); g >= floor {
		t.Errorf("goal after stop is %d MiB, want the default back", g>>20)
	}
}
