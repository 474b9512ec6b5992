package hlc

import (
	"testing"
	"time"
)

// TestRewind plays a device whose physical clock ran ten minutes ahead:
// after its stamps are refused it corrects the physical reading and
// rewinds to the region's clock, and its next stamp is just above the
// region's instead of above its own discarded ones.
func TestRewind(t *testing.T) {
	const t0 = 1_700_000_000_000
	phys := NewManualClock(t0 + 10*time.Minute.Milliseconds())
	c := NewClock(phys.Now, time.Minute)
	ahead := c.Now()
	if ahead.WallMillis() != t0+10*time.Minute.Milliseconds() {
		t.Fatalf("stamp %v, want the skewed wall time", ahead)
	}
	phys.Set(t0) // the physical clock is corrected
	if got := c.Now(); got <= ahead {
		t.Fatalf("without Rewind the clock must stay above its high-water mark: %v <= %v", got, ahead)
	}

	region := Make(t0-5, 3)
	c.Rewind(region)
	if c.Last() != region {
		t.Fatalf("Last = %v after Rewind(%v)", c.Last(), region)
	}
	if got := c.Now(); got != Make(t0, 0) {
		t.Fatalf("after Rewind Now follows physical time: %v, want %v", got, Make(t0, 0))
	}
	// Rewinding upwards is not Rewind's job: Last stays.
	before := c.Last()
	c.Rewind(before + 100)
	if c.Last() != before {
		t.Fatalf("Rewind above Last moved the mark: %v -> %v", before, c.Last())
	}
	// After Rewind to a mark ahead of physical time, stamps stay above it.
	c.Rewind(Make(t0-1, 0))
	phys.Set(t0 - 10)
	if got := c.Now(); got != Make(t0-1, 1) {
		t.Fatalf("Now = %v, want one logical step above the mark", got)
	}
}
