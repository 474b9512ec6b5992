package crdt

import (
	"bytes"
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
	return bytes.Compare(s.Replica[:], o.Replica[:]) < 0
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

func (c Ctx) find(r ReplicaID) (int, bool) {
	return slices.BinarySearchFunc(c, r, func(d Dot, r ReplicaID) int {
		return bytes.Compare(d.Replica[:], r[:])
	})
}

// Covers reports whether dot d is superseded by this context.
func (c Ctx) Covers(d Dot) bool {
	i, ok := c.find(d.Replica)
	return ok && c[i].Seq >= d.Seq
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
