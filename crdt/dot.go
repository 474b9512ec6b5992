package crdt

import (
	"encoding/binary"
	"slices"

	"github.com/google/uuid"

	"github.com/syncd/syncd/hlc"
)

// ReplicaID names a replica (a region or a device). It is a UUID made once
// and kept in the replica's store; 16 bytes keep field states small.
type ReplicaID = uuid.UUID

// Dot identifies one change: the replica that made it and that replica's
// sequence number for it. Merging is by dots.
type Dot struct {
	Replica ReplicaID `json:"replica"`
	Seq     uint64    `json:"seq"`
}

// IsZero reports whether d is the zero dot (no replica, no sequence).
func (d Dot) IsZero() bool { return d.Seq == 0 && d.Replica == uuid.Nil }

// Stamp orders changes totally: by HLC, then by replica id. Replicas never
// issue the same HLC twice, so two distinct changes never share a stamp
// unless a replica id is forged.
type Stamp struct {
	HLC     hlc.Timestamp `json:"hlc"`
	Replica ReplicaID     `json:"replica"`
}

// Less reports whether s orders before o.
func (s Stamp) Less(o Stamp) bool {
	if s.HLC != o.HLC {
		return s.HLC < o.HLC
	}
	return cmpID(s.Replica, o.Replica) < 0
}

// IsZero reports whether s was never set.
func (s Stamp) IsZero() bool { return s.HLC == 0 && s.Replica == uuid.Nil }

// Max returns the later of s and o.
func (s Stamp) Max(o Stamp) Stamp {
	if s.Less(o) {
		return o
	}
	return s
}

// Ctx is a compact causal context: per origin, the highest dot known to be
// superseded. Sorted by replica id so that equal contexts are equal slices.
// (The package doc says why one number per origin is exact.)
type Ctx []Dot

// find is a binary search without a comparison closure: merge calls it
// for every dot of every change, and a context rarely holds more than a
// few writers.
func (c Ctx) find(r ReplicaID) (int, bool) {
	lo, hi := 0, len(c)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if cmpID(c[m].Replica, r) < 0 {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo, lo < len(c) && c[lo].Replica == r
}

// Covers reports whether dot d is superseded by this context.
func (c Ctx) Covers(d Dot) bool {
	i, ok := c.find(d.Replica)
	return ok && c[i].Seq >= d.Seq
}

// cmpID orders replica ids as bytes.Compare orders their bytes, in two
// word compares.
func cmpID(a, b ReplicaID) int {
	if x, y := binary.BigEndian.Uint64(a[:8]), binary.BigEndian.Uint64(b[:8]); x != y {
		if x < y {
			return -1
		}
		return 1
	}
	x, y := binary.BigEndian.Uint64(a[8:]), binary.BigEndian.Uint64(b[8:])
	switch {
	case x < y:
		return -1
	case x > y:
		return 1
	}
	return 0
}

// Add records that every dot of d.Replica up to d.Seq is superseded.
func (c Ctx) Add(d Dot) Ctx {
	i, ok := c.find(d.Replica)
	if ok {
		if d.Seq > c[i].Seq {
			c[i].Seq = d.Seq
		}
		return c
	}
	return slices.Insert(c, i, d)
}
