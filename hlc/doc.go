// Package hlc is a hybrid logical clock (Kulkarni et al., "Logical Physical
// Clocks and Consistent Snapshots in Globally Distributed Databases", 2014).
//
// A [Timestamp] packs 48 bits of Unix milliseconds and a 16-bit logical
// counter into a uint64, so stamps compare as plain integers, stay close to
// wall time (useful for last-writer-wins and for humans reading logs), and
// still order causally related events when physical clocks disagree or step
// backwards.
//
// The package does no I/O and never reads time.Now itself: a [Clock] is
// given a func() int64 that reads the physical clock. That keeps the core
// deterministic, so a replica can be replayed from a recorded history and
// tested with a [ManualClock] instead of sleeps.
//
// The main loop of a replica is:
//
//   - stamp each local write with [Clock.Now];
//   - call [Clock.Update] with the stamp of every change received from a peer,
//     refusing the change if it returns an error wrapping [ErrClockSkew]
//     (a peer whose clock is far ahead would otherwise drag every replica's
//     clock forward with it, and last-writer-wins would favour it for as
//     long as the skew lasts);
//   - persist [Clock.Last] together with the writes it stamped, and hand it
//     to [Clock.Restore] after a restart so stamps never go backwards even
//     if the machine's clock did.
//
// Stamps travel as 16 lowercase hex digits ([Timestamp.String]) because
// JavaScript numbers cannot hold 64-bit integers, and because fixed-width hex
// sorts bytewise in time order, so stores and indexes can compare the
// strings directly.
package hlc
