package hlc

import (
	"errors"
	"fmt"
	"math"
	"sync/atomic"
	"time"
)

// Timestamp is 48 bits of Unix milliseconds shifted left 16 bits, ORed with
// a 16-bit logical counter. Ordering timestamps as integers orders them by
// wall time, then by logical counter.
//
// 48 bits of milliseconds last until the year 10889; 16 bits of logical
// counter allow 65536 events per millisecond before the counter carries into
// the wall part (see [Clock.Now]).
//
// The zero Timestamp is before every stamp a [Clock] issues, so it can mean
// "never".
type Timestamp uint64

const (
	logicalBits = 16
	logicalMask = 1<<logicalBits - 1

	// maxWallMillis is the largest wall time a Timestamp can hold.
	maxWallMillis = 1<<(64-logicalBits) - 1

	// encodedLen is the length of the string form: one hex digit per nibble,
	// fixed width so that byte order is numeric order.
	encodedLen = 16
)

// DefaultMaxSkew is how far ahead of local physical time a remote stamp may
// be before [Clock.Update] refuses it.
const DefaultMaxSkew = time.Minute

var (
	// ErrBadTimestamp is wrapped by every error from [Parse] and
	// [Timestamp.UnmarshalText].
	ErrBadTimestamp = errors.New("hlc: malformed timestamp")

	// ErrClockSkew is wrapped by the error [Clock.Update] returns when a
	// remote stamp is too far ahead of local physical time. Callers should
	// refuse the message that carried it rather than apply it.
	ErrClockSkew = errors.New("hlc: remote clock too far ahead")
)

// Make builds a Timestamp. wallMillis is clamped to [0, 2^48-1] rather than
// truncated, so that an out-of-range wall time still sorts at the right end
// instead of wrapping around to the wrong one.
func Make(wallMillis int64, logical uint16) Timestamp {
	return Timestamp(uint64(clampWall(wallMillis))<<logicalBits | uint64(logical))
}

// WallMillis is the wall-time part, in Unix milliseconds.
func (t Timestamp) WallMillis() int64 { return int64(t >> logicalBits) }

// Logical is the logical counter that orders stamps within one millisecond.
func (t Timestamp) Logical() uint16 { return uint16(t & logicalMask) }

// IsZero reports whether t is the zero Timestamp, which no Clock issues.
func (t Timestamp) IsZero() bool { return t == 0 }

// String returns exactly 16 lowercase hex digits, zero padded. Fixed width
// is what makes bytewise string order equal time order; do not trim it.
func (t Timestamp) String() string {
	var b [encodedLen]byte
	t.encode(&b)
	return string(b[:])
}

const hexDigits = "0123456789abcdef"

func (t Timestamp) encode(b *[encodedLen]byte) {
	for i := encodedLen - 1; i >= 0; i-- {
		b[i] = hexDigits[t&0xf]
		t >>= 4
	}
}

// Parse is the inverse of [Timestamp.String]. It is strict: anything but
// exactly 16 lowercase hex digits is an error, because a second spelling of
// the same stamp (uppercase, unpadded, prefixed) would sort differently as a
// string and break stores that compare the encoded form.
func Parse(s string) (Timestamp, error) {
	if len(s) != encodedLen {
		return 0, badTimestamp(s, "want 16 hex digits")
	}
	var t Timestamp
	for i := 0; i < len(s); i++ {
		c := s[i]
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		default:
			return 0, badTimestamp(s, "want lowercase hex digits")
		}
		t = t<<4 | Timestamp(d)
	}
	return t, nil
}

func badTimestamp(s, why string) error {
	// The input may come from the network; keep the error message bounded.
	const maxShown = 40
	if len(s) > maxShown {
		s = s[:maxShown] + "..."
	}
	return fmt.Errorf("%w %q: %s", ErrBadTimestamp, s, why)
}

// MarshalText encodes t as [Timestamp.String], so encoding/json writes a
// string rather than a number JavaScript would round.
func (t Timestamp) MarshalText() ([]byte, error) {
	var b [encodedLen]byte
	t.encode(&b)
	return b[:], nil
}

// UnmarshalText decodes the form written by [Timestamp.MarshalText]. On
// error *t is left unchanged.
func (t *Timestamp) UnmarshalText(b []byte) error {
	v, err := Parse(string(b))
	if err != nil {
		return err
	}
	*t = v
	return nil
}

// Clock issues hybrid logical timestamps.
//
// A Clock is not safe for concurrent use: it belongs to one replica, whose
// event loop is single-threaded, and a lock here would only hide a design
// mistake in the caller.
type Clock struct {
	// physical reads the local physical clock in Unix milliseconds. It is
	// injected so that the clock is deterministic under test and replay.
	physical func() int64

	// maxSkew bounds how far ahead of local physical time a remote stamp
	// may be. Without it one peer with a wrong clock would drag every
	// replica's clock forward, and its writes would win every
	// last-writer-wins race until real time caught up.
	maxSkew time.Duration

	// last is the high-water mark: the largest stamp issued or observed.
	// Every later Now is strictly greater; it is what callers persist.
	last Timestamp
}

// NewClock returns a Clock that reads physical time from physicalMillis
// (Unix milliseconds, e.g. func() int64 { return time.Now().UnixMilli() })
// and refuses remote stamps more than maxSkew ahead of it. maxSkew <= 0
// means [DefaultMaxSkew]. maxSkew is applied at millisecond granularity.
//
// Physical readings below 0 are treated as 0 and readings above 2^48-1 as
// 2^48-1: a clock that far off is broken, and clamping keeps stamps
// representable while the logical counter keeps them increasing.
//
// NewClock panics if physicalMillis is nil.
func NewClock(physicalMillis func() int64, maxSkew time.Duration) *Clock {
	if physicalMillis == nil {
		panic("hlc: NewClock: nil physical clock")
	}
	if maxSkew <= 0 {
		maxSkew = DefaultMaxSkew
	}
	return &Clock{physical: physicalMillis, maxSkew: maxSkew}
}

// MaxSkew is the limit [Clock.Update] enforces.
func (c *Clock) MaxSkew() time.Duration { return c.maxSkew }

// Now returns a stamp strictly greater than every stamp this clock has
// issued or observed. It follows physical time when physical time is ahead;
// otherwise (many events in one millisecond, a physical clock that stepped
// backwards, a peer slightly ahead) it keeps the wall part and counts the
// logical part up.
//
// When the logical counter is full the increment carries into the wall
// part (wall+1, logical 0): running a millisecond ahead of physical time is
// better than going backwards or repeating a stamp.
//
// Now panics if the timestamp space is exhausted (wall 2^48-1, logical
// 0xFFFF), which cannot happen before the year 10889 unless a corrupt
// high-water mark was passed to Restore.
func (c *Clock) Now() Timestamp {
	pt := clampWall(c.physical())
	switch {
	case pt > c.last.WallMillis():
		c.last = Make(pt, 0)
	case c.last == math.MaxUint64:
		panic("hlc: timestamp space exhausted")
	default:
		// The encoding makes +1 the HLC rule "same wall, logical+1", and
		// makes the overflow carry into the wall part for free.
		c.last++
	}
	return c.last
}

// Update observes a stamp received from another replica so that every later
// [Clock.Now] is greater than it, preserving causality across replicas.
//
// If remote's wall time is more than MaxSkew ahead of local physical time,
// Update leaves the clock unchanged and returns an error wrapping
// [ErrClockSkew] that says by how much and what the limit is; the caller
// should refuse whatever carried the stamp. A remote exactly MaxSkew ahead
// is accepted.
func (c *Clock) Update(remote Timestamp) error {
	pt := clampWall(c.physical())
	if ahead := remote.WallMillis() - pt; ahead > c.maxSkew.Milliseconds() {
		return fmt.Errorf("%w: remote stamp %s is %v ahead of local physical time, max skew is %v",
			ErrClockSkew, remote, time.Duration(ahead)*time.Millisecond, c.maxSkew)
	}
	if remote > c.last {
		c.last = remote
	}
	return nil
}

// Last is the high-water mark: the largest stamp issued or observed. Persist
// it (with the writes it stamped) and pass it to [Clock.Restore] on restart.
// It is the zero Timestamp for a fresh clock.
func (c *Clock) Last() Timestamp { return c.last }

// Restore raises the high-water mark to hw, so that every later [Clock.Now]
// is greater than hw even if the physical clock went backwards while the
// process was down. hw is trusted (it came from local storage), so no skew
// check applies. A hw at or below [Clock.Last] changes nothing.
func (c *Clock) Restore(hw Timestamp) {
	if hw > c.last {
		c.last = hw
	}
}

// Rewind lowers the high-water mark to hw, so that stamps above hw may be
// issued again. It exists for one case: a device whose physical clock ran
// ahead, whose pushes a region refused as too far in the future. Its own
// refused stamps are then discarded (re-issued lower, see
// replica.Replica.Restamp); without Rewind every later Now would stay
// above them and be refused in turn until real time caught up.
//
// The caller must make sure no stamp above hw is still in use: hw must be
// at or above every stamp observed from other replicas and every own
// stamp kept. A hw at or above [Clock.Last] changes nothing.
func (c *Clock) Rewind(hw Timestamp) {
	if hw < c.last {
		c.last = hw
	}
}

func clampWall(ms int64) int64 {
	switch {
	case ms < 0:
		return 0
	case ms > maxWallMillis:
		return maxWallMillis
	}
	return ms
}

// ManualClock is a physical clock for tests: it moves only when told to, and
// may be told to move backwards. Pass its Now method to [NewClock].
//
// It is safe for concurrent use, so a test may move it while the code under
// test reads it from another goroutine.
type ManualClock struct {
	millis atomic.Int64
}

// NewManualClock returns a ManualClock reading millis (Unix milliseconds).
func NewManualClock(millis int64) *ManualClock {
	m := &ManualClock{}
	m.millis.Store(millis)
	return m
}

// Now returns the current reading in Unix milliseconds.
func (m *ManualClock) Now() int64 { return m.millis.Load() }

// Set sets the reading, backwards if need be.
func (m *ManualClock) Set(millis int64) { m.millis.Store(millis) }

// Advance moves the reading by d, which may be negative. The clock has
// millisecond resolution; the sub-millisecond part of d is dropped.
func (m *ManualClock) Advance(d time.Duration) { m.millis.Add(d.Milliseconds()) }
