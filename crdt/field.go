package crdt

import (
	"bytes"
	"encoding/json"
	"math"
	"math/bits"
	"slices"

	"github.com/syncd/syncd/hlc"
)

// Sibling is one live write of a register: a value with its dot and HLC.
type Sibling struct {
	Dot   Dot             `json:"dot"`
	HLC   hlc.Timestamp   `json:"hlc"`
	Value json.RawMessage `json:"value,omitempty"`
}

// Stamp orders siblings; the newest is the register's displayed value.
func (s Sibling) Stamp() Stamp { return Stamp{s.HLC, s.Dot.Replica} }

// Register is the state of lww and manual fields: every write not yet
// superseded, newest first, and the superseded dots. LWW shows the newest
// and keeps the rest as conflict history; manual shows them all as
// siblings. One state for both means a schema change between the two never
// loses a write.
type Register struct {
	Sibs []Sibling `json:"sibs,omitempty"`
	Dead Ctx       `json:"dead,omitempty"`
}

func (r *Register) apply(c *Change) bool {
	changed := false
	for _, d := range c.Context {
		if !r.Dead.Covers(d) {
			r.Dead = r.Dead.Add(d)
			changed = true
		}
	}
	if changed {
		r.Sibs = slices.DeleteFunc(r.Sibs, func(s Sibling) bool { return r.Dead.Covers(s.Dot) })
	}
	d := c.Dot()
	if !r.Dead.Covers(d) && !slices.ContainsFunc(r.Sibs, func(s Sibling) bool { return s.Dot == d }) {
		s := Sibling{Dot: d, HLC: c.HLC, Value: c.Value}
		st := s.Stamp()
		i, _ := slices.BinarySearchFunc(r.Sibs, st, func(e Sibling, t Stamp) int {
			if t.Less(e.Stamp()) {
				return -1 // newest first
			}
			return 1
		})
		r.Sibs = slices.Insert(r.Sibs, i, s)
		changed = true
	}
	if len(r.Sibs) == 0 {
		r.Sibs = nil
	}
	return changed
}

// Dots lists the live siblings' dots: the context of a write that has seen
// them all.
func (r *Register) Dots() []Dot {
	ds := make([]Dot, len(r.Sibs))
	for i, s := range r.Sibs {
		ds[i] = s.Dot
	}
	return ds
}

// Tag is one live add of a set element.
type Tag struct {
	Dot Dot           `json:"dot"`
	HLC hlc.Timestamp `json:"hlc"`
}

// Element is one value of an OR-set with its live adds and removed dots.
// An element with no live adds is absent but keeps its removed dots, so an
// add that arrives after its remove stays removed.
type Element struct {
	Value json.RawMessage `json:"value"`
	Adds  []Tag           `json:"adds,omitempty"`
	Dead  Ctx             `json:"dead,omitempty"`
}

// ORSet is an add-wins observed-remove set: a remove takes out only the
// adds it observed, so a concurrent add survives.
type ORSet struct {
	Elems []Element `json:"elems"` // sorted by canonical value
}

// find is a binary search without a comparison closure: it runs for
// every set change a replica applies or prepares.
func (s *ORSet) find(v []byte) (int, bool) {
	lo, hi := 0, len(s.Elems)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if bytes.Compare(s.Elems[m].Value, v) < 0 {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo, lo < len(s.Elems) && bytes.Equal(s.Elems[lo].Value, v)
}

func (s *ORSet) apply(c *Change) bool {
	i, ok := s.find(c.Value)
	if !ok {
		s.Elems = slices.Insert(s.Elems, i, Element{Value: c.Value})
	}
	e := &s.Elems[i]
	changed := !ok
	pruned := false
	for _, d := range c.Context {
		if !e.Dead.Covers(d) {
			e.Dead = e.Dead.Add(d)
			pruned = true
		}
	}
	if pruned {
		e.Adds = slices.DeleteFunc(e.Adds, func(t Tag) bool { return e.Dead.Covers(t.Dot) })
		if len(e.Adds) == 0 {
			e.Adds = nil
		}
		changed = true
	}
	if c.Op == OpAdd {
		d := c.Dot()
		if !e.Dead.Covers(d) && !slices.ContainsFunc(e.Adds, func(t Tag) bool { return t.Dot == d }) {
			e.Adds = append(e.Adds, Tag{d, c.HLC})
			slices.SortFunc(e.Adds, func(a, b Tag) int { return cmpDot(a.Dot, b.Dot) })
			changed = true
		}
	}
	return changed
}

// Element returns the element holding value v, if any.
func (s *ORSet) Element(v []byte) *Element {
	if i, ok := s.find(v); ok {
		return &s.Elems[i]
	}
	return nil
}

// Part is one replica's contribution to a counter.
type Part struct {
	Replica ReplicaID     `json:"replica"`
	Seq     uint64        `json:"seq"`   // the origin seq of the change that set Total
	Total   int64         `json:"total"` // the replica's running sum of its deltas
	HLC     hlc.Timestamp `json:"hlc"`
}

// Counter is a PN-counter: the sum of each replica's latest running total.
// The latest total per replica (by its own sequence) wins, which makes
// merge idempotent and order-free without keeping every dot.
type Counter struct {
	Parts []Part `json:"parts"` // sorted by replica
}

func (ct *Counter) apply(c *Change) bool {
	i, ok := slices.BinarySearchFunc(ct.Parts, c.Origin, func(p Part, r ReplicaID) int { return cmpID(p.Replica, r) })
	if ok {
		if ct.Parts[i].Seq >= c.Seq {
			return false
		}
		ct.Parts[i] = Part{c.Origin, c.Seq, c.Total, c.HLC}
		return true
	}
	ct.Parts = slices.Insert(ct.Parts, i, Part{c.Origin, c.Seq, c.Total, c.HLC})
	return true
}

// Value sums the parts exactly and clamps the sum to int64. An origin
// refuses a write that would overflow the count it sees, but concurrent
// writes that each fit can still sum past int64; a running saturating sum
// would then depend on the order of the parts (MinInt64, MinInt64, MaxInt64
// gives -1), so the sum is taken in 128 bits and clamped once.
func (ct *Counter) Value() int64 {
	var hi int64 // the sum is hi<<64 + lo, two's complement
	var lo uint64
	for _, p := range ct.Parts {
		var carry uint64
		lo, carry = bits.Add64(lo, uint64(p.Total), 0)
		hi += int64(carry)
		if p.Total < 0 {
			hi-- // sign extension: the high word of a negative part is -1
		}
	}
	switch {
	case hi > 0 || hi == 0 && lo > math.MaxInt64:
		return math.MaxInt64
	case hi < -1 || hi == -1 && lo <= math.MaxInt64:
		return math.MinInt64
	}
	return int64(lo)
}

// Part returns replica r's running total (0 if it never counted).
func (ct *Counter) Part(r ReplicaID) int64 {
	i, ok := slices.BinarySearchFunc(ct.Parts, r, func(p Part, r ReplicaID) int { return cmpID(p.Replica, r) })
	if ok {
		return ct.Parts[i].Total
	}
	return 0
}

// SatAdd adds with saturation at the int64 bounds.
func SatAdd(a, b int64) int64 {
	s := a + b
	if a > 0 && b > 0 && s < 0 {
		return math.MaxInt64
	}
	if a < 0 && b < 0 && s >= 0 {
		return math.MinInt64
	}
	return s
}

// AddOverflows reports whether a+b leaves int64.
func AddOverflows(a, b int64) bool {
	s := a + b
	return (a > 0 && b > 0 && s < 0) || (a < 0 && b < 0 && s >= 0)
}

// Field is the merged state of one field. Each kind's state is kept apart,
// so ops of different kinds sent by replicas with different schemas all
// merge; which one is shown is decided by the newest change (LastKind),
// the same on every replica.
//
// The document record (field name "") is a Field too: its Last is the
// newest delete.
type Field struct {
	Last     Stamp    `json:"last"`
	LastKind Kind     `json:"last_kind,omitempty"`
	Reg      Register `json:"reg"`
	Set      *ORSet   `json:"set,omitempty"`
	Ctr      *Counter `json:"ctr,omitempty"`
}

// Apply merges one change into the field and reports whether the state
// changed. It never fails: Validate has already refused what cannot merge.
func (f *Field) Apply(c *Change) bool {
	changed := false
	if st := c.Stamp(); f.Last.Less(st) {
		f.Last, f.LastKind = st, c.Kind
		changed = true
	}
	switch c.Op {
	case OpSet, OpResolve:
		changed = f.Reg.apply(c) || changed
	case OpAdd, OpRemove:
		if f.Set == nil {
			f.Set = &ORSet{}
		}
		changed = f.Set.apply(c) || changed
	case OpIncr:
		if f.Ctr == nil {
			f.Ctr = &Counter{}
		}
		changed = f.Ctr.apply(c) || changed
	}
	return changed
}

// Clone returns a deep copy, so a replica can stage a change without
// touching the state its storage handed it.
func (f *Field) Clone() *Field {
	g := &Field{Last: f.Last, LastKind: f.LastKind}
	g.Reg.Sibs = slices.Clone(f.Reg.Sibs)
	g.Reg.Dead = slices.Clone(f.Reg.Dead)
	if f.Set != nil {
		// One backing array for all elements' adds and one for their
		// removed dots, not two allocations per element: a replica clones
		// a field each time a batch first touches it. Each element's
		// slices are capped at their length, so growing one moves it out
		// instead of overwriting its neighbour; nil stays nil, as with
		// slices.Clone.
		var nAdds, nDead int
		for _, e := range f.Set.Elems {
			nAdds, nDead = nAdds+len(e.Adds), nDead+len(e.Dead)
		}
		adds, dead := make([]Tag, 0, nAdds), make(Ctx, 0, nDead)
		g.Set = &ORSet{Elems: make([]Element, len(f.Set.Elems))}
		for i, e := range f.Set.Elems {
			ge := Element{Value: e.Value, Adds: e.Adds[:0:0], Dead: e.Dead[:0:0]}
			if len(e.Adds) > 0 {
				a := len(adds)
				adds = append(adds, e.Adds...)
				ge.Adds = adds[a:len(adds):len(adds)]
			}
			if len(e.Dead) > 0 {
				d := len(dead)
				dead = append(dead, e.Dead...)
				ge.Dead = dead[d:len(dead):len(dead)]
			}
			g.Set.Elems[i] = ge
		}
	}
	if f.Ctr != nil {
		g.Ctr = &Counter{Parts: slices.Clone(f.Ctr.Parts)}
	}
	return g
}

func cmpDot(a, b Dot) int {
	if c := cmpID(a.Replica, b.Replica); c != 0 {
		return c
	}
	switch {
	case a.Seq < b.Seq:
		return -1
	case a.Seq > b.Seq:
		return 1
	}
	return 0
}
