// Package replicatest is a deterministic simulator of a whole syncd
// deployment: R regions and D devices, each a replica.Replica over its own
// replica.MemStorage, driven by one seeded random source.
//
// One run plays a random phase in which every step is one event: a local
// write (ops of every kind on a few documents, so conflicts are frequent), a
// persist of a replica's Ready, a message delivery, a tick, a device
// attaching to, leaving or failing over between regions, a partition or a
// heal, a crash (the Replica is dropped, its MemStorage kept: whatever was
// not saved is lost; it may strike between Ready and Save, or between Save
// and sending) or a restart. A replica may also keep taking inputs while
// its Ready is being saved. Clocks are skewed, jump on restart, and in one
// seed of four a device's clock runs past the skew bound, so its stamps are
// refused until time catches up. The network drops, duplicates, reorders
// and delays messages. Then it heals everything, stops dropping, connects
// every device and ticks and delivers until the replicas settle. At that
// point every replica must hold the identical state, and that state must
// match a reference model computed naively, from the semantics, out of the
// list of every change its origin made durable.
//
// With Config.Follow, every third device follows only one of two
// collections, as a clientsdk device with Options.Collections does: it
// must hold every change of what it follows and none of the rest (but its
// own writes), and a device that later follows everything (its vector
// reset, as sqlitestore.Follow does) must end up holding everything.
//
// The loop around each replica is the one every adapter runs: persist the
// Ready, then send its messages, then Advance. The simulator also checks,
// on every send, that no message carries a change its origin could still
// lose.
//
// A failure is a *Failure holding the seed and the last events of the run,
// so it can be replayed:
//
//	go test ./replica/replicatest -run TestSim -seed=N -v
package replicatest
