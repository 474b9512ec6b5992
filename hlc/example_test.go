package hlc_test

import (
	"errors"
	"fmt"
	"time"

	"github.com/syncd/syncd/hlc"
)

// A phone and a server stamp writes, exchange stamps, survive a restart and
// refuse a peer whose clock is far ahead. Real code passes
// func() int64 { return time.Now().UnixMilli() } instead of a ManualClock.
func Example() {
	phoneTime := hlc.NewManualClock(1_700_000_000_000)
	serverTime := hlc.NewManualClock(1_700_000_000_000 - 5_000) // 5s behind
	phone := hlc.NewClock(phoneTime.Now, hlc.DefaultMaxSkew)
	server := hlc.NewClock(serverTime.Now, hlc.DefaultMaxSkew)

	w1 := phone.Now()
	fmt.Println("phone writes ", w1)

	// The server receives the write. Its clock is behind, but within max
	// skew, so it catches up and its next write is ordered after the phone's.
	if err := server.Update(w1); err != nil {
		fmt.Println("refused:", err)
		return
	}
	w2 := server.Now()
	fmt.Println("server writes", w2, "after phone:", w2 > w1)

	// The server persists Last with its writes and restores it on restart.
	hw := server.Last()
	server = hlc.NewClock(serverTime.Now, hlc.DefaultMaxSkew)
	server.Restore(hw)
	fmt.Println("after restart", server.Now())

	// A peer two minutes ahead is refused and does not move the clock.
	far := hlc.Make(serverTime.Now()+(2*time.Minute).Milliseconds(), 0)
	err := server.Update(far)
	fmt.Println(errors.Is(err, hlc.ErrClockSkew), server.Last() == hw+1)
	fmt.Println(err)

	// Output:
	// phone writes  018bcfe568000000
	// server writes 018bcfe568000001 after phone: true
	// after restart 018bcfe568000002
	// true true
	// hlc: remote clock too far ahead: remote stamp 018bcfe729380000 is 2m0s ahead of local physical time, max skew is 1m0s
}

// Stamps are exchanged as fixed-width strings whose byte order is time order.
func ExampleParse() {
	ts, err := hlc.Parse("018bcfe56800002a")
	if err != nil {
		panic(err)
	}
	fmt.Println(ts.WallMillis(), ts.Logical())
	fmt.Println(time.UnixMilli(ts.WallMillis()).UTC().Format(time.RFC3339))

	_, err = hlc.Parse("18BCFE56800002A")
	fmt.Println(errors.Is(err, hlc.ErrBadTimestamp))
	// Output:
	// 1700000000000 42
	// 2023-11-14T22:13:20Z
	// true
}
