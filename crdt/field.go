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
func (r Register) Dots() []Dot {
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
		e := Element{Value: c.Value}
		if len(s.Elems) == 0 && cap(s.Elems) > 0 {
			// newORSet's room for the first element's first add (see
			// there): elements are never dropped, so an empty set with
			// capacity is one newORSet has just made for c.
			e.Adds = s.Elems[:1][0].Adds[:0]
		}
		s.Elems = slices.Insert(s.Elems, i, e)
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
	if len(e.Adds) == 0 {
		e.Adds = nil // no adds is nil, one state (and newORSet's room, if unused, is let go)
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
//
// A region holds millions of fields and nearly all of them hold the state
// of one kind, most often a register with a single write, so a Field
// keeps its stamp and one reference to the state of its kind rather than
// room for every kind: 48 bytes, where a header with all three took 96.
// The state is always in the one form its content calls for (see pack),
// so equal states compare equal however they were reached. Read it with
// Reg, Set and Ctr; build one from parts with FieldState.Field.
type Field struct {
	Last     Stamp
	LastKind Kind
	st       state
}

// state is one of: nil (no kind has state), *oneSib (a register with one
// live write and nothing superseded, the commonest state), *Register,
// *ORSet, *Counter, or *multi when more than one kind has state.
type state interface{ isState() }

// oneSib is the register with a single live write and an empty context:
// the sibling alone, without a Register's two slice headers.
type oneSib [1]Sibling

// multi holds the states of a field that ops of several kinds reached.
type multi struct {
	reg Register
	set *ORSet
	ctr *Counter
}

func (*oneSib) isState()   {}
func (*Register) isState() {}
func (*ORSet) isState()    {}
func (*Counter) isState()  {}
func (*multi) isState()    {}

// FieldState is a Field spelled out kind by kind: the form decoders and
// models build, and the field's JSON form.
type FieldState struct {
	Last     Stamp    `json:"last"`
	LastKind Kind     `json:"last_kind,omitempty"`
	Reg      Register `json:"reg"`
	Set      *ORSet   `json:"set,omitempty"`
	Ctr      *Counter `json:"ctr,omitempty"`
}

// Field returns the field holding s. It takes s's slices and pointers
// over: s must not be changed afterwards.
func (s FieldState) Field() *Field {
	return &Field{Last: s.Last, LastKind: s.LastKind, st: pack(s.Reg, s.Set, s.Ctr)}
}

// State spells the field out. The slices and pointers are the field's own:
// read them, do not change them.
func (f *Field) State() FieldState {
	return FieldState{Last: f.Last, LastKind: f.LastKind, Reg: f.Reg(), Set: f.Set(), Ctr: f.Ctr()}
}

// MarshalJSON writes the field as its FieldState: the form it always had.
func (f Field) MarshalJSON() ([]byte, error) { return json.Marshal(f.State()) }

// UnmarshalJSON reads what MarshalJSON writes.
func (f *Field) UnmarshalJSON(b []byte) error {
	var s FieldState
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	*f = *s.Field()
	return nil
}

func (r *Register) present() bool { return len(r.Sibs) > 0 || len(r.Dead) > 0 }

// pack chooses the one form for the given states. A register with one
// live write and an empty context keeps only that sibling, in the array
// its slice already points to.
func pack(reg Register, set *ORSet, ctr *Counter) state {
	if len(reg.Sibs) == 0 {
		reg.Sibs = nil // an empty slice and nil are the same state
	}
	if len(reg.Dead) == 0 {
		reg.Dead = nil
	}
	n := 0
	if reg.present() {
		n++
	}
	if set != nil {
		n++
	}
	if ctr != nil {
		n++
	}
	switch {
	case n == 0:
		return nil
	case n > 1:
		return &multi{reg: reg, set: set, ctr: ctr}
	case set != nil:
		return set
	case ctr != nil:
		return ctr
	case len(reg.Sibs) == 1 && len(reg.Dead) == 0:
		return (*oneSib)(reg.Sibs)
	}
	r := new(Register) // not &reg, which would put every call's reg on the heap
	*r = reg
	return r
}

// Reg returns the register state (lww and manual); the zero Register if
// there is none. Its slices are the field's own: read only.
func (f *Field) Reg() Register {
	switch st := f.st.(type) {
	case *oneSib:
		return Register{Sibs: st[:]}
	case *Register:
		return *st
	case *multi:
		return st.reg
	}
	return Register{}
}

// Set returns the OR-set state, or nil if the field has none.
func (f *Field) Set() *ORSet {
	switch st := f.st.(type) {
	case *ORSet:
		return st
	case *multi:
		return st.set
	}
	return nil
}

// Ctr returns the counter state, or nil if the field has none.
func (f *Field) Ctr() *Counter {
	switch st := f.st.(type) {
	case *Counter:
		return st
	case *multi:
		return st.ctr
	}
	return nil
}

// setReg stores a register that Register.apply changed.
func (f *Field) setReg(r Register) {
	if len(r.Dead) == 0 {
		r.Dead = nil // growReg's spare room, unused
	}
	switch st := f.st.(type) {
	case *Register:
		if len(r.Sibs) != 1 || len(r.Dead) != 0 {
			*st = r
			return
		}
	case *multi:
		st.reg = r
		return
	}
	f.st = pack(r, f.Set(), f.Ctr())
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
		if r, ok := f.st.(*Register); ok {
			// The form of a field written more than once, and one it
			// keeps (superseded dots are never forgotten): merge in place.
			if r.apply(c) {
				if len(r.Dead) == 0 {
					r.Dead = nil // growReg's spare room, unused
				}
				changed = true
			}
			break
		}
		one, _ := f.st.(*oneSib)
		if one != nil && one[0].Dot != c.Dot() {
			// Any other write leaves a second sibling or a superseded
			// dot: make the room for both at once.
			f.st = growReg(one)
		}
		// Register.apply changes the register's arrays only when it
		// reports a change, and then the new headers are stored back.
		r := f.Reg()
		if r.apply(c) {
			f.setReg(r)
			changed = true
		} else if one != nil {
			f.st = one
		}
	case OpAdd, OpRemove:
		s := f.Set()
		if s == nil {
			s = newORSet()
			f.st = pack(f.Reg(), s, f.Ctr())
		}
		changed = s.apply(c) || changed
	case OpIncr:
		ct := f.Ctr()
		if ct == nil {
			ct = newCounter()
			f.st = pack(f.Reg(), f.Set(), ct)
		}
		changed = ct.apply(c) || changed
	}
	return changed
}

// NewField returns a new field holding change c, as applying c to an
// empty Field would, with the field and its state in one allocation.
// Most fields are made by one change and read back later: one
// allocation less per new field, and the state next to the field in
// memory, where Apply looks for it straight after loading the field.
func NewField(c *Change) *Field {
	switch c.Op {
	case OpSet, OpResolve:
		if len(c.Context) > 0 {
			break // the dots it supersedes need a full Register
		}
		b := new(struct {
			f   Field
			one oneSib
		})
		b.one[0] = Sibling{Dot: c.Dot(), HLC: c.HLC, Value: c.Value}
		b.f.st = &b.one
		if st := c.Stamp(); b.f.Last.Less(st) {
			b.f.Last, b.f.LastKind = st, c.Kind
		}
		return &b.f
	case OpAdd, OpRemove:
		b := new(struct {
			f     Field
			s     ORSet
			first [1]Element
			tag   [1]Tag
		})
		b.s.Elems = b.first[:0]
		b.first[0].Adds = b.tag[:0] // see newORSet
		b.f.st = &b.s
		b.f.Apply(c)
		return &b.f
	case OpIncr:
		b := new(struct {
			f     Field
			ct    Counter
			first [1]Part
		})
		b.ct.Parts = b.first[:0]
		b.f.st = &b.ct
		b.f.Apply(c)
		return &b.f
	}
	f := &Field{}
	f.Apply(c)
	return f
}

// Clone returns a deep copy, so a replica can stage a change without
// touching the state its storage handed it.
func (f *Field) Clone() *Field {
	g := &Field{Last: f.Last, LastKind: f.LastKind}
	switch st := f.st.(type) {
	case *oneSib:
		c := *st
		g.st = &c
	case *Register:
		g.st = st.clone()
	case *ORSet:
		g.st = st.clone()
	case *Counter:
		g.st = st.clone()
	case *multi:
		m := &multi{reg: Register{Sibs: slices.Clone(st.reg.Sibs), Dead: slices.Clone(st.reg.Dead)}}
		if st.set != nil {
			m.set = st.set.clone()
		}
		if st.ctr != nil {
			m.ctr = st.ctr.clone()
		}
		g.st = m
	}
	return g
}

// growReg returns the register that the single write in one becomes on
// its next change, with room for that change: a second sibling and a
// superseded dot, in the same allocation as the register.
func growReg(one *oneSib) *Register {
	b := new(struct {
		r    Register
		sibs [2]Sibling
		dead [1]Dot
	})
	b.sibs[0] = one[0]
	b.r.Sibs, b.r.Dead = b.sibs[:1], b.dead[:0]
	return &b.r
}

// clone copies a register. One live sibling, the usual state of a
// register that has been written more than once, shares the register's
// allocation: a replica clones a field each time a batch first touches it.
func (r *Register) clone() *Register {
	if len(r.Sibs) != 1 {
		return &Register{Sibs: slices.Clone(r.Sibs), Dead: slices.Clone(r.Dead)}
	}
	b := new(struct {
		r   Register
		sib [1]Sibling
	})
	b.sib[0] = r.Sibs[0]
	b.r.Sibs, b.r.Dead = b.sib[:], slices.Clone(r.Dead)
	return &b.r
}

// newORSet returns an empty set with room for its first element, and for
// that element's first add, in the same allocation: most sets are made
// by one add, and an allocation less per new field is what applying to
// cold fields is short of. The room for the add waits in the first
// element's slot, past the end of Elems, until ORSet.apply inserts that
// element; an element made by a remove leaves it unused.
func newORSet() *ORSet {
	b := new(struct {
		s     ORSet
		first [1]Element
		tag   [1]Tag
	})
	b.s.Elems = b.first[:0]
	b.first[0].Adds = b.tag[:0]
	return &b.s
}

// newCounter returns an empty counter with room for its first part in the
// same allocation, as newORSet.
func newCounter() *Counter {
	b := new(struct {
		c     Counter
		first [1]Part
	})
	b.c.Parts = b.first[:0]
	return &b.c
}

func (s *ORSet) clone() *ORSet {
	// One backing array for all elements' adds and one for their removed
	// dots, not two allocations per element: a replica clones a field
	// each time a batch first touches it. Each element's slices are
	// capped at their length, so growing one moves it out instead of
	// overwriting its neighbour; nil stays nil, as with slices.Clone.
	var nAdds, nDead int
	for _, e := range s.Elems {
		nAdds, nDead = nAdds+len(e.Adds), nDead+len(e.Dead)
	}
	adds, dead := make([]Tag, 0, nAdds), make(Ctx, 0, nDead)
	g := &ORSet{Elems: make([]Element, len(s.Elems))}
	for i, e := range s.Elems {
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
		g.Elems[i] = ge
	}
	return g
}

func (ct *Counter) clone() *Counter { return &Counter{Parts: slices.Clone(ct.Parts)} }

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
