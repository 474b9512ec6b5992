package hlc

import (
	"cmp"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"pgregory.net/rapid"
)

// event is what happens at one row of an event-history table.
type event int

const (
	send    event = iota // a local write: Now
	recv                 // a remote stamp arrives: Update
	restore              // a restart reloads the high-water mark: Restore
)

func (e event) String() string {
	return [...]string{"send", "recv", "restore"}[e]
}

// step is one row of an event history: the physical clock reads wall, then
// the event happens. For send, want is the stamp Now returns; for recv and
// restore, want is Last afterwards.
type step struct {
	wall    int64
	event   event
	input   Timestamp // the remote stamp (recv) or high-water mark (restore)
	want    Timestamp
	wantErr bool // recv is refused as clock skew
}

func runHistory(t *testing.T, c *Clock, m *ManualClock, steps []step) {
	t.Helper()
	for i, s := range steps {
		m.Set(s.wall)
		before := c.Last()
		var got Timestamp
		var err error
		switch s.event {
		case send:
			got = c.Now()
		case recv:
			err = c.Update(s.input)
			got = c.Last()
		case restore:
			c.Restore(s.input)
			got = c.Last()
		}
		if s.wantErr {
			if !errors.Is(err, ErrClockSkew) {
				t.Fatalf("%d: %s %v at wall %d: err = %v, want ErrClockSkew", i, s.event, s.input, s.wall, err)
			}
			if got != before {
				t.Fatalf("%d: refused %s changed Last from %v to %v", i, s.event, before, got)
			}
		} else if err != nil {
			t.Fatalf("%d: %s %v at wall %d: unexpected error %v", i, s.event, s.input, s.wall, err)
		}
		if got != s.want {
			t.Fatalf("%d: %s %v at wall %d: got (%d,%d), want (%d,%d)", i, s.event, s.input, s.wall,
				got.WallMillis(), got.Logical(), s.want.WallMillis(), s.want.Logical())
		}
	}
}

func TestHLCClock(t *testing.T) {
	m := NewManualClock(0)
	c := NewClock(m.Now, 10*time.Millisecond)
	runHistory(t, c, m, []step{
		// Local events follow physical time, counting within a millisecond.
		{wall: 1, event: send, want: Make(1, 0)},
		{wall: 1, event: send, want: Make(1, 1)},
		{wall: 2, event: send, want: Make(2, 0)},
		// A peer in the same millisecond but further along raises us.
		{wall: 3, event: recv, input: Make(2, 5), want: Make(2, 5)},
		{wall: 3, event: send, want: Make(3, 0)},
		// A peer a little ahead: we adopt its wall time and count on it.
		{wall: 3, event: recv, input: Make(10, 3), want: Make(10, 3)},
		{wall: 4, event: send, want: Make(10, 4)},
		// An old stamp changes nothing.
		{wall: 4, event: recv, input: Make(5, 0), want: Make(10, 4)},
		// Exactly max skew ahead is accepted; one millisecond more is not,
		// and the refusal leaves the clock where it was.
		{wall: 4, event: recv, input: Make(14, 0), want: Make(14, 0)},
		{wall: 4, event: recv, input: Make(15, 0), want: Make(14, 0), wantErr: true},
		{wall: 5, event: send, want: Make(14, 1)},
		// Physical time catches up and takes over again.
		{wall: 15, event: send, want: Make(15, 0)},
		{wall: 15, event: recv, input: Make(15, 0), want: Make(15, 0)},
		{wall: 15, event: send, want: Make(15, 1)},
		// What was refused before is fine once we are within max skew of it.
		{wall: 16, event: recv, input: Make(26, 7), want: Make(26, 7)},
		{wall: 16, event: send, want: Make(26, 8)},
	})
}

func TestHLCPhysicalClockJump(t *testing.T) {
	m := NewManualClock(0)
	c := NewClock(m.Now, 10*time.Millisecond)
	runHistory(t, c, m, []step{
		{wall: 100, event: send, want: Make(100, 0)},
		// NTP steps the clock back: stamps keep increasing on the logical part.
		{wall: 50, event: send, want: Make(100, 1)},
		{wall: 50, event: send, want: Make(100, 2)},
		{wall: 99, event: send, want: Make(100, 3)},
		{wall: 100, event: send, want: Make(100, 4)},
		{wall: 101, event: send, want: Make(101, 0)},
		// A jump forward is simply followed.
		{wall: 5000, event: send, want: Make(5000, 0)},
		// A jump to before 1970 is clamped to 0 and still counts up.
		{wall: 0, event: send, want: Make(5000, 1)},
		{wall: -7, event: send, want: Make(5000, 2)},
		// Skew is judged against the (wrong) local physical clock, so after
		// a big step back a peer's honest stamp is refused: better to stall
		// than to let the clock be dragged.
		{wall: 0, event: recv, input: Make(5001, 0), want: Make(5000, 2), wantErr: true},
		{wall: 5000, event: recv, input: Make(5001, 0), want: Make(5001, 0)},
		{wall: 0, event: send, want: Make(5001, 1)},
	})
}

func TestLogicalOverflowCarries(t *testing.T) {
	m := NewManualClock(0)
	c := NewClock(m.Now, 0)
	runHistory(t, c, m, []step{
		{wall: 7, event: restore, input: Make(7, math.MaxUint16-1), want: Make(7, math.MaxUint16-1)},
		{wall: 7, event: send, want: Make(7, math.MaxUint16)},
		// The counter is full: carry into the wall part rather than wrap.
		{wall: 7, event: send, want: Make(8, 0)},
		{wall: 7, event: send, want: Make(8, 1)},
		{wall: 8, event: send, want: Make(8, 2)},
		{wall: 9, event: send, want: Make(9, 0)},
	})
	// A remote stamp with a full counter carries the same way.
	m.Set(100)
	if err := c.Update(Make(100, math.MaxUint16)); err != nil {
		t.Fatal(err)
	}
	if got, want := c.Now(), Make(101, 0); got != want {
		t.Fatalf("after remote with full counter: got %v, want %v", got, want)
	}
}

func TestPhysicalClamped(t *testing.T) {
	m := NewManualClock(-1)
	c := NewClock(m.Now, 0)
	// Even at the clamped bottom of time, Now never issues the zero stamp.
	if got, want := c.Now(), Make(0, 1); got != want {
		t.Fatalf("negative physical: got %v, want %v", got, want)
	}
	m.Set(math.MaxInt64)
	if got, want := c.Now(), Make(maxWallMillis, 0); got != want {
		t.Fatalf("huge physical: got %v, want %v", got, want)
	}
	if got, want := c.Now(), Make(maxWallMillis, 1); got != want {
		t.Fatalf("huge physical again: got %v, want %v", got, want)
	}
	// The skew check must not overflow near the top either.
	if err := c.Update(Timestamp(math.MaxUint64 - 1)); err != nil {
		t.Fatalf("remote at the top of time with physical clamped there: %v", err)
	}
}

func TestExhaustedPanics(t *testing.T) {
	c := NewClock(NewManualClock(0).Now, 0)
	c.Restore(math.MaxUint64)
	defer func() {
		if recover() == nil {
			t.Fatal("Now after the last representable stamp did not panic")
		}
	}()
	c.Now()
}

func TestMake(t *testing.T) {
	for _, tc := range []struct {
		wall     int64
		logical  uint16
		wantWall int64
	}{
		{0, 0, 0},
		{1, 2, 1},
		{1_700_000_000_000, math.MaxUint16, 1_700_000_000_000},
		{maxWallMillis, 9, maxWallMillis},
		{-5, 3, 0},
		{maxWallMillis + 1, 4, maxWallMillis},
		{math.MinInt64, 0, 0},
		{math.MaxInt64, 0, maxWallMillis},
	} {
		ts := Make(tc.wall, tc.logical)
		if ts.WallMillis() != tc.wantWall || ts.Logical() != tc.logical {
			t.Errorf("Make(%d, %d) = (%d, %d), want (%d, %d)", tc.wall, tc.logical,
				ts.WallMillis(), ts.Logical(), tc.wantWall, tc.logical)
		}
	}
	if !Make(0, 0).IsZero() || Make(0, 1).IsZero() || Make(1, 0).IsZero() {
		t.Error("IsZero is wrong")
	}
}

func TestClockSkew(t *testing.T) {
	const phys = 1_700_000_000_000
	m := NewManualClock(phys)
	for _, d := range []time.Duration{0, -time.Second} {
		if got := NewClock(m.Now, d).MaxSkew(); got != DefaultMaxSkew {
			t.Errorf("NewClock(_, %v).MaxSkew() = %v, want %v", d, got, DefaultMaxSkew)
		}
	}
	c := NewClock(m.Now, 0)
	first := c.Now()

	limit := DefaultMaxSkew.Milliseconds()
	tooFar := Make(phys+limit+1, 0)
	err := c.Update(tooFar)
	if !errors.Is(err, ErrClockSkew) {
		t.Fatalf("Update(%v) = %v, want ErrClockSkew", tooFar, err)
	}
	for _, want := range []string{"1m0.001s", "1m0s", tooFar.String()} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if got := c.Last(); got != first {
		t.Fatalf("refused Update moved Last from %v to %v", first, got)
	}
	if got, want := c.Now(), Make(phys, 1); got != want {
		t.Fatalf("Now after refused Update = %v, want %v", got, want)
	}

	atLimit := Make(phys+limit, 42)
	if err := c.Update(atLimit); err != nil {
		t.Fatalf("Update exactly max skew ahead: %v", err)
	}
	if got := c.Last(); got != atLimit {
		t.Fatalf("Last = %v, want %v", got, atLimit)
	}
	if got := c.Now(); got <= atLimit {
		t.Fatalf("Now = %v, not after accepted remote %v", got, atLimit)
	}
}

func TestRestore(t *testing.T) {
	m := NewManualClock(10_000)
	before := NewClock(m.Now, 0)
	for range 5 {
		before.Now()
	}
	hw := before.Last()

	// The process restarts and the physical clock has stepped back meanwhile.
	m.Set(3_000)
	after := NewClock(m.Now, 0)
	if !after.Last().IsZero() {
		t.Fatalf("fresh clock Last = %v, want zero", after.Last())
	}
	after.Restore(hw)
	if got := after.Last(); got != hw {
		t.Fatalf("Last after Restore = %v, want %v", got, hw)
	}
	// Restoring something older, e.g. a stale copy, must not go back.
	after.Restore(Make(5_000, 0))
	after.Restore(0)
	if got := after.Last(); got != hw {
		t.Fatalf("Restore of an older mark moved Last to %v, want %v", got, hw)
	}
	if got, want := after.Now(), hw+1; got != want {
		t.Fatalf("first Now after Restore = %v, want %v", got, want)
	}
}

// TestClockProperties drives a clock with random physical jumps, local
// events, remote stamps and restores, and checks it against a model that
// only remembers the largest stamp seen.
func TestClockProperties(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		skew := time.Duration(rapid.Int64Range(1, 1000).Draw(t, "skewMillis")) * time.Millisecond
		m := NewManualClock(rapid.Int64Range(-10, 1<<40).Draw(t, "start"))
		c := NewClock(m.Now, skew)
		var high Timestamp // model: the largest stamp issued or observed
		remoteNear := func(t *rapid.T) Timestamp {
			wall := m.Now() + rapid.Int64Range(-2*skew.Milliseconds(), 2*skew.Milliseconds()).Draw(t, "delta")
			return Make(wall, rapid.Uint16().Draw(t, "logical"))
		}
		t.Repeat(map[string]func(*rapid.T){
			"set": func(t *rapid.T) {
				m.Set(rapid.Int64Range(-10, 1<<40).Draw(t, "wall"))
			},
			"advance": func(t *rapid.T) {
				m.Advance(time.Duration(rapid.Int64Range(-50, 50).Draw(t, "ms")) * time.Millisecond)
			},
			"now": func(t *rapid.T) {
				got := c.Now()
				if got <= high {
					t.Fatalf("Now = %v, not after %v", got, high)
				}
				if pt := clampWall(m.Now()); got.WallMillis() < pt {
					t.Fatalf("Now = %v lags physical time %d", got, pt)
				}
				high = got
			},
			"update": func(t *rapid.T) {
				r := remoteNear(t)
				err := c.Update(r)
				tooFar := r.WallMillis() > clampWall(m.Now())+skew.Milliseconds()
				switch {
				case tooFar && !errors.Is(err, ErrClockSkew):
					t.Fatalf("Update(%v) at %d = %v, want ErrClockSkew", r, m.Now(), err)
				case !tooFar && err != nil:
					t.Fatalf("Update(%v) at %d = %v, want nil", r, m.Now(), err)
				case !tooFar:
					high = max(high, r)
				}
			},
			"restore": func(t *rapid.T) {
				hw := remoteNear(t)
				c.Restore(hw)
				high = max(high, hw)
			},
			"": func(t *rapid.T) {
				if got := c.Last(); got != high {
					t.Fatalf("Last = %v, want %v", got, high)
				}
			},
		})
	})
}

func TestStringOrder(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		a := Timestamp(rapid.Uint64().Draw(t, "a"))
		b := Timestamp(rapid.Uint64().Draw(t, "b"))
		as, bs := a.String(), b.String()
		if got, want := strings.Compare(as, bs), cmp.Compare(a, b); got != want {
			t.Fatalf("compare(%q, %q) = %d, but compare(%d, %d) = %d", as, bs, got, uint64(a), uint64(b), want)
		}
	})
}

func TestStringRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		ts   Timestamp
		want string
	}{
		{0, "0000000000000000"},
		{1, "0000000000000001"},
		{Make(1, 0), "0000000000010000"},
		{Make(1_700_000_000_000, 0xabcd), "018bcfe56800abcd"},
		{math.MaxUint64, "ffffffffffffffff"},
	} {
		if got := tc.ts.String(); got != tc.want {
			t.Errorf("%d.String() = %q, want %q", uint64(tc.ts), got, tc.want)
		}
	}
	rapid.Check(t, func(t *rapid.T) {
		ts := Timestamp(rapid.Uint64().Draw(t, "ts"))
		s := ts.String()
		if len(s) != 16 || strings.ToLower(s) != s {
			t.Fatalf("String() = %q, want 16 lowercase hex digits", s)
		}
		back, err := Parse(s)
		if err != nil || back != ts {
			t.Fatalf("Parse(%q) = %v, %v; want %v", s, back, err, ts)
		}
		js, err := json.Marshal(map[string]Timestamp{"ts": ts})
		if err != nil {
			t.Fatal(err)
		}
		if want := `{"ts":"` + s + `"}`; string(js) != want {
			t.Fatalf("JSON = %s, want %s", js, want)
		}
		var got map[string]Timestamp
		if err := json.Unmarshal(js, &got); err != nil || got["ts"] != ts {
			t.Fatalf("JSON round trip of %v = %v, %v", ts, got["ts"], err)
		}
	})
}

func TestParseRejects(t *testing.T) {
	for _, s := range []string{
		"",
		"0",
		"000000000000001",   // 15 digits: unpadded
		"00000000000000001", // 17 digits
		"018BCFE56800ABCD",  // uppercase would sort differently
		"018bcfe56800abcD",
		"0x8bcfe56800abcd",
		"+18bcfe56800abcd",
		"-18bcfe56800abcd",
		" 18bcfe56800abcd",
		"018bcfe56800abc ",
		"018bcfe56800abcg",
		"018bcfe56800abc\x00",
		"018bcfe56800ab\u00e9", // 16 bytes, not 16 digits
		strings.Repeat("0", 1000),
	} {
		ts, err := Parse(s)
		if !errors.Is(err, ErrBadTimestamp) {
			t.Errorf("Parse(%q) = %v, %v; want ErrBadTimestamp", s, ts, err)
			continue
		}
		if len(err.Error()) > 200 {
			t.Errorf("Parse error for a %d-byte input is %d bytes long", len(s), len(err.Error()))
		}
	}
}

func TestUnmarshalTextRejects(t *testing.T) {
	ts := Make(5, 5)
	if err := ts.UnmarshalText([]byte("nope")); !errors.Is(err, ErrBadTimestamp) {
		t.Fatalf("UnmarshalText(nope) = %v, want ErrBadTimestamp", err)
	}
	if ts != Make(5, 5) {
		t.Fatalf("failed UnmarshalText changed the value to %v", ts)
	}
	// A JSON number would have been rounded by JavaScript already.
	var v struct{ TS Timestamp }
	if err := json.Unmarshal([]byte(`{"TS":123}`), &v); err == nil {
		t.Fatal("JSON number accepted as a timestamp")
	}
}

func BenchmarkNow(b *testing.B) {
	b.Run("same-millisecond", func(b *testing.B) {
		c := NewClock(NewManualClock(1_700_000_000_000).Now, 0)
		for b.Loop() {
			c.Now()
		}
	})
	b.Run("advancing", func(b *testing.B) {
		var ms int64 = 1_700_000_000_000
		c := NewClock(func() int64 { ms++; return ms }, 0)
		for b.Loop() {
			c.Now()
		}
	})
	// The realistic case, and the baseline it should be compared with.
	physical := func() int64 { return time.Now().UnixMilli() }
	b.Run("time.Now", func(b *testing.B) {
		c := NewClock(physical, 0)
		for b.Loop() {
			c.Now()
		}
	})
	b.Run("time.Now-baseline", func(b *testing.B) {
		for b.Loop() {
			physical()
		}
	})
}
