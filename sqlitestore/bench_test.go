package sqlitestore

import (
	"context"
	"strings"
	"testing"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/replica"
)

// Run with:
//
//	go test ./sqlitestore -run '^$' -bench 'Writes|Apply' -benchtime 10000x
//
// Each benchmark has, per durability (synchronous=NORMAL and FULL):
//
//   - raw:      the baseline, plain SQLite with the store's pragmas;
//   - store:    the store doing the same logical work through Save;
//   - replica:  the same end to end through a replica (for information);
//   - vs-raw:   raw and store interleaved in 20 rounds (see Compare), which
//     reports both rates and store/raw as "ratio" (target ≥ 0.5). Use this
//     one for the ratio: on a shared machine, or with fsync latencies that
//     drift, raw and store measured one after the other disagree by more
//     than the difference being measured.

type workloadFn func(ctx context.Context, dir, durability string, steps int) (*Workload, error)

func prepare(b *testing.B, mk workloadFn, dir, durability string, steps int) *Workload {
	b.Helper()
	w, err := mk(context.Background(), dir, durability, steps)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { w.Close() })
	return w
}

// runWorkload runs one prepared workload of b.N steps, timing only the
// steps, and reports its throughput.
func runWorkload(b *testing.B, mk workloadFn, durability, unit string) {
	w := prepare(b, mk, b.TempDir(), durability, b.N)
	b.ResetTimer()
	res, err := w.Run(context.Background())
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(res.PerSecond(), unit)
	b.ReportMetric(float64(res.Elapsed.Nanoseconds())/float64(res.Ops)/1e3, "µs/"+strings.TrimSuffix(unit, "s/s"))
	b.ReportMetric(0, "ns/op") // a step is a transaction of PerStep ops; the rate above is the figure
}

func benchPair(b *testing.B, store, raw, replica workloadFn, unit string) {
	for _, dur := range []string{"normal", "full"} {
		b.Run(dur, func(b *testing.B) {
			b.Run("raw", func(b *testing.B) { runWorkload(b, raw, dur, unit) })
			b.Run("store", func(b *testing.B) { runWorkload(b, store, dur, unit) })
			b.Run("replica", func(b *testing.B) { runWorkload(b, replica, dur, unit) })
			b.Run("vs-raw", func(b *testing.B) {
				ws := prepare(b, store, b.TempDir(), dur, b.N)
				wr := prepare(b, raw, b.TempDir(), dur, b.N)
				b.ResetTimer()
				rs, rr, err := Compare(context.Background(), ws, wr, 20)
				b.StopTimer()
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(rs.PerSecond(), "store_"+unit)
				b.ReportMetric(rr.PerSecond(), "raw_"+unit)
				b.ReportMetric(rs.PerSecond()/rr.PerSecond(), "ratio")
				b.ReportMetric(0, "ns/op")
			})
		})
	}
}

// BenchmarkWrites: single-writer durable writes, one per transaction:
// Save of a Ready with one field state + one log row + the namespace
// state, against raw one-row upsert transactions. "replica" adds the
// replica's work (read the field through Storage, make the change).
func BenchmarkWrites(b *testing.B) {
	benchPair(b, StoreWrites, RawWrites, ReplicaWrites, "writes/s")
}

const applyBatch = 1000

// BenchmarkApply: batches of 1,000 remote changes, one Save (one
// transaction) per batch, against raw upserts of as many rows in
// 1,000-row transactions. b.N counts batches. "replica" steps each batch
// through a region replica first (a dot check and a field read per
// change, then the merge).
func BenchmarkApply(b *testing.B) {
	batched := func(fn func(ctx context.Context, dir, dur string, batches, size int) (*Workload, error)) workloadFn {
		return func(ctx context.Context, dir, dur string, n int) (*Workload, error) {
			return fn(ctx, dir, dur, n, applyBatch)
		}
	}
	benchPair(b, batched(StoreApply), batched(RawBatches), batched(ReplicaApply), "changes/s")
}

// BenchmarkGetDoc: point reads on the read pool (what GET /v1/docs does
// under the HTTP layer), from as many goroutines as GOMAXPROCS, over
// 100,000 documents of three fields.
func BenchmarkGetDoc(b *testing.B) {
	ctx := context.Background()
	s, err := Open(ctx, b.TempDir()+"/store.db", Options{KeepLog: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	const docs = 100_000
	for lo := 0; lo < docs; lo += 1000 {
		var cs []crdt.Change
		for i := lo; i < lo+1000; i++ {
			for j, f := range []string{"title", "body", "n"} {
				c := benchChange(s.ReplicaID(), uint64(3*i+j+1), i)
				c.Field = f
				cs = append(cs, c)
			}
		}
		if err := s.Save(ctx, []*replica.Ready{readyOf(cs, crdt.Vector{s.ReplicaID(): uint64(3 * (lo + 1000))}, uint64(3*(lo+1000)))}); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i = (i + 7919) % docs
			fs, err := s.GetDoc(ctx, crdt.DocKey{NS: "bench", Coll: "items", Doc: benchDoc(i)})
			if err != nil || len(fs) != 3 {
				b.Fatalf("GetDoc: %d fields, %v", len(fs), err)
			}
		}
	})
}
