package replica

import (
	"iter"
	"slices"

	"github.com/syncd/syncd/crdt"
)

// DotSet is a set of dots kept, per origin, as sorted runs of consecutive
// sequence numbers. An origin numbers its changes 1, 2, 3... and a store
// receives them nearly in order, so the dots of a region's whole history
// take a few runs, where a map took about 84 bytes a dot.
type DotSet map[crdt.ReplicaID][]seqRun

// seqRun is the sequence numbers lo..hi, both included.
type seqRun struct{ lo, hi uint64 }

// run returns the index of the first run that holds seq or ends just
// before it, or that starts after it.
func run(rs []seqRun, seq uint64) int {
	i, _ := slices.BinarySearchFunc(rs, seq, func(r seqRun, s uint64) int {
		if s > 0 && r.hi < s-1 { // written so that nothing overflows
			return -1
		}
		return 1
	})
	return i
}

// Has reports whether d is in the set.
func (s DotSet) Has(d crdt.Dot) bool {
	rs := s[d.Replica]
	i := run(rs, d.Seq)
	return i < len(rs) && rs[i].lo <= d.Seq && d.Seq <= rs[i].hi
}

// Add puts d in the set.
func (s DotSet) Add(d crdt.Dot) {
	rs, q := s[d.Replica], d.Seq
	i := run(rs, q)
	switch {
	case i < len(rs) && rs[i].lo <= q && q <= rs[i].hi:
		return
	case i < len(rs) && rs[i].hi < q: // so rs[i].hi == q-1
		rs[i].hi = q
		if i+1 < len(rs) && rs[i+1].lo-1 == q {
			rs[i].hi = rs[i+1].hi
			rs = slices.Delete(rs, i+1, i+2)
		}
	case i < len(rs) && rs[i].lo-1 == q:
		rs[i].lo = q
	default:
		rs = slices.Insert(rs, i, seqRun{q, q})
	}
	s[d.Replica] = rs
}

// Len returns the number of dots in the set.
func (s DotSet) Len() int {
	n := 0
	for _, rs := range s {
		for _, r := range rs {
			n += int(r.hi - r.lo + 1)
		}
	}
	return n
}

// All yields every dot, origin by origin (in no order), each origin's in
// sequence order.
func (s DotSet) All() iter.Seq[crdt.Dot] {
	return func(yield func(crdt.Dot) bool) {
		for id, rs := range s {
			for _, r := range rs {
				for q := r.lo; ; q++ {
					if !yield(crdt.Dot{Replica: id, Seq: q}) {
						return
					}
					if q == r.hi {
						break
					}
				}
			}
		}
	}
}
