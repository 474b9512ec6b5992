package replica_test

import (
	"math/rand/v2"
	"testing"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/replica"
)

// TestDotSetIsASet checks the run-length dot index against a plain map:
// dots from a few origins, added nearly in order, in random order, and
// again, must give the same membership, size and listing.
func TestDotSetIsASet(t *testing.T) {
	for seed := uint64(1); seed <= 50; seed++ {
		rng := rand.New(rand.NewPCG(seed, 9))
		s, want := replica.DotSet{}, map[crdt.Dot]bool{}
		origins := []crdt.ReplicaID{{1}, {2}, {3}}
		next := map[crdt.ReplicaID]uint64{}
		for range 400 {
			o := origins[rng.IntN(len(origins))]
			var q uint64
			switch rng.IntN(3) {
			case 0: // in order
				next[o]++
				q = next[o]
			case 1: // anywhere near, including repeats
				q = 1 + rng.Uint64N(next[o]+5)
			default: // the edges of 64-bit sequence numbers
				q = []uint64{0, 1, 2, 1<<64 - 2, 1<<64 - 1}[rng.IntN(5)]
			}
			d := crdt.Dot{Replica: o, Seq: q}
			s.Add(d)
			want[d] = true
			for range 5 {
				p := crdt.Dot{Replica: origins[rng.IntN(len(origins))], Seq: rng.Uint64N(next[o] + 8)}
				if s.Has(p) != want[p] {
					t.Fatalf("seed %d: Has(%v) = %v, want %v", seed, p, s.Has(p), want[p])
				}
			}
		}
		if s.Len() != len(want) {
			t.Fatalf("seed %d: Len = %d, want %d", seed, s.Len(), len(want))
		}
		got := map[crdt.Dot]bool{}
		for d := range s.All() {
			if got[d] || !want[d] {
				t.Fatalf("seed %d: All yields %v twice or wrongly", seed, d)
			}
			got[d] = true
		}
		if len(got) != len(want) {
			t.Fatalf("seed %d: All yields %d dots, want %d", seed, len(got), len(want))
		}
		for d := range want {
			if !s.Has(d) {
				t.Fatalf("seed %d: lost %v", seed, d)
			}
		}
	}
}
