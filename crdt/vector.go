package crdt

import (
	"bytes"
	"slices"
)

// Vector is a version vector over region stamps: for each region, the
// highest region sequence number up to which this replica holds every
// change. It has one entry per region, never per device (DESIGN.md).
type Vector map[ReplicaID]uint64

// Covers reports whether the vector holds the change stamped d.
func (v Vector) Covers(d Dot) bool { return v[d.Replica] >= d.Seq }

// CoversAll reports whether v holds everything o holds.
func (v Vector) CoversAll(o Vector) bool {
	for r, n := range o {
		if v[r] < n {
			return false
		}
	}
	return true
}

// Merge raises v to hold everything o holds.
func (v Vector) Merge(o Vector) {
	for r, n := range o {
		if v[r] < n {
			v[r] = n
		}
	}
}

// Clone returns an independent copy.
func (v Vector) Clone() Vector {
	c := make(Vector, len(v))
	for r, n := range v {
		c[r] = n
	}
	return c
}

// Missing returns, for each region where o is ahead of v, the first region
// sequence number v lacks — exactly what to ask o for.
func (v Vector) Missing(o Vector) Vector {
	var m Vector
	for r, n := range o {
		if have := v[r]; n > have {
			if m == nil {
				m = Vector{}
			}
			m[r] = have + 1
		}
	}
	return m
}

// Regions returns the vector's replica ids in a stable order.
func (v Vector) Regions() []ReplicaID {
	rs := make([]ReplicaID, 0, len(v))
	for r := range v {
		rs = append(rs, r)
	}
	slices.SortFunc(rs, func(a, b ReplicaID) int { return bytes.Compare(a[:], b[:]) })
	return rs
}

// Sum is the total number of changes the vector holds; lag in changes is
// the difference of two sums over the same regions.
func (v Vector) Sum() uint64 {
	var s uint64
	for _, n := range v {
		s += n
	}
	return s
}
