package crdt_test

// Property tests for the merge laws. Several simulated replicas write to one
// document through the resolver policies (so contexts and counter totals are
// what a real replica would build from its local view), and exchange random
// subsets of their changes, JSON-encoded, between steps, so that writes are
// concurrent and arrive out of causal order, duplicated and late. Each
// replica's rendered view is checked against a naive reference model after
// every step; at the end every change is delivered everywhere and the laws
// are checked over the whole set.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"pgregory.net/rapid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/resolver"
)

const (
	simNS   = "app"
	simColl = "items"
	simDoc  = "doc-1"
)

var (
	simFields = []string{"a", "b", "c"}
	allKinds  = []crdt.Kind{crdt.KindLWW, crdt.KindManual, crdt.KindORSet, crdt.KindCounter}
	// Set elements, raw: canonicalised before use. "<&>" checks that a
	// value survives the JSON encoding of the batches that carry it.
	setPool = []string{`"apple"`, `"<pear & plum>"`, `{"sku":1,"qty":[2]}`, `3`, `null`}
)

type simReplica struct {
	id     crdt.ReplicaID
	clock  *hlc.Clock
	seq    uint64
	schema map[string]crdt.Kind
	doc    crdt.Doc
	known  map[crdt.Dot]bool
	log    []crdt.Change // what it holds, in arrival order
}

type sim struct {
	t       *rapid.T
	now     int64 // shared physical time in ms; each replica reads it with its own offset
	reps    []*simReplica
	all     []crdt.Change // every change made, in creation order
	ids     uint64
	refused int
}

func newSim(t *rapid.T) *sim {
	s := &sim{t: t, now: 1_700_000_000_000}
	n := rapid.IntRange(2, 4).Draw(t, "replicas")
	mixed := rapid.Bool().Draw(t, "mixedSchemas")
	shared := drawSchema(t, "schema")
	for i := 0; i < n; i++ {
		var id crdt.ReplicaID
		copy(id[:], rapid.SliceOfN(rapid.Byte(), 16, 16).Draw(t, "id"))
		id[0] = byte(i*64) + id[0]%64 + 1 // distinct and never nil
		offset := rapid.Int64Range(0, 20).Draw(t, "clockOffset")
		r := &simReplica{id: id, schema: shared, known: map[crdt.Dot]bool{}}
		r.clock = hlc.NewClock(func() int64 { return s.now + offset }, time.Hour)
		if mixed {
			// Replicas with different schemas: the same field reaches
			// the merge under different kinds.
			r.schema = drawSchema(t, "ownSchema")
		}
		s.reps = append(s.reps, r)
	}
	return s
}

func drawSchema(t *rapid.T, label string) map[string]crdt.Kind {
	m := map[string]crdt.Kind{}
	for _, f := range simFields {
		m[f] = rapid.SampledFrom(allKinds).Draw(t, label)
	}
	return m
}

// fataler is what both *testing.T and *rapid.T offer.
type fataler interface {
	Fatalf(format string, args ...any)
}

func canon(t fataler, raw string) json.RawMessage {
	v, err := crdt.Canonical([]byte(raw), crdt.DefaultLimits)
	if err != nil {
		t.Fatalf("canonical %s: %v", raw, err)
	}
	return v
}

// write makes replica r do one local op the way a replica does: stamp it,
// let the policy build the context from the local view, apply it locally.
func (s *sim) write(r *simReplica) {
	t := s.t
	s.ids++
	var id uuid.UUID
	id[0], id[15] = 0xcc, byte(s.ids)
	id[14] = byte(s.ids >> 8)
	c := crdt.Change{ID: id, Origin: r.id, Seq: r.seq + 1, NS: simNS, Coll: simColl, Doc: simDoc}
	if rapid.IntRange(0, 15).Draw(t, "deleteDoc") == 0 {
		c.Op = crdt.OpDelete
	} else {
		c.Field = rapid.SampledFrom(simFields).Draw(t, "field")
		c.Kind = r.schema[c.Field]
		switch c.Kind {
		case crdt.KindLWW, crdt.KindManual:
			c.Op = crdt.OpSet
			if rapid.IntRange(0, 3).Draw(t, "resolve") == 0 {
				c.Op = crdt.OpResolve
			}
			v := fmt.Sprintf(`"v%d.%d"`, slices.Index(s.reps, r), c.Seq)
			if rapid.IntRange(0, 5).Draw(t, "oddValue") == 0 {
				v = rapid.SampledFrom(setPool).Draw(t, "value")
			}
			c.Value = canon(t, v)
		case crdt.KindORSet:
			c.Op = rapid.SampledFrom([]crdt.Op{crdt.OpAdd, crdt.OpAdd, crdt.OpRemove}).Draw(t, "setOp")
			c.Value = canon(t, rapid.SampledFrom(setPool).Draw(t, "elem"))
		case crdt.KindCounter:
			c.Op = crdt.OpIncr
			d := rapid.Int64Range(-3, 3).Draw(t, "delta")
			if rapid.IntRange(0, 6).Draw(t, "hugeDelta") == 0 {
				// Big enough that two of them overflow: refused at
				// Prepare locally, or summed concurrently.
				d = rapid.SampledFrom([]int64{math.MaxInt64, math.MaxInt64 / 2, math.MinInt64, math.MinInt64 / 2}).Draw(t, "huge")
			}
			c.Value = json.RawMessage(fmt.Sprint(d))
		}
	}
	c.HLC = r.clock.Now()
	if c.Op != crdt.OpDelete {
		f := r.doc.Fields[c.Field]
		before := c
		err := resolver.For(c.Kind).Prepare(f, &c)
		if c.Kind == crdt.KindCounter {
			s.checkCounterPrepare(r, &before, &c, err)
		}
		if err != nil {
			s.refused++
			return
		}
	}
	if err := c.Validate(crdt.DefaultLimits); err != nil {
		t.Fatalf("prepared change does not validate: %v\n%+v", err, c)
	}
	r.seq++
	s.all = append(s.all, c)
	s.deliver(r, c)
}

// checkCounterPrepare checks the overflow rule independently: an incr is
// refused exactly when the writer's own running total, or the count it
// sees, would leave int64.
func (s *sim) checkCounterPrepare(r *simReplica, before, after *crdt.Change, err error) {
	d := big.NewInt(before.Delta())
	var mine int64
	for _, c := range r.log {
		if c.Op == crdt.OpIncr && c.Field == before.Field && c.Origin == r.id {
			mine += c.Delta() // own deltas were all accepted, so this fits
		}
	}
	seen := refCounter(fieldChanges(r.log, before.Field), false)
	var seenV int64
	json.Unmarshal(seen, &seenV)
	overflow := !fits(new(big.Int).Add(big.NewInt(mine), d)) || !fits(new(big.Int).Add(big.NewInt(seenV), d))
	switch {
	case overflow && !errors.Is(err, crdt.ErrCounterRange):
		s.t.Fatalf("incr %d on own %d, count %d: err = %v, want ErrCounterRange", before.Delta(), mine, seenV, err)
	case !overflow && err != nil:
		s.t.Fatalf("incr %d on own %d, count %d refused: %v", before.Delta(), mine, seenV, err)
	case !overflow && after.Total != mine+before.Delta():
		s.t.Fatalf("incr %d on own %d: total %d", before.Delta(), mine, after.Total)
	}
}

// deliver applies c at r, observing its clock as a real replica does.
func (s *sim) deliver(r *simReplica, c crdt.Change) {
	if err := r.clock.Update(c.HLC); err != nil {
		s.t.Fatalf("clock: %v", err)
	}
	changed := r.doc.Apply(&c)
	if r.known[c.Dot()] {
		if changed {
			s.t.Fatalf("re-applying %v changed the state", c.Dot())
		}
		return
	}
	r.known[c.Dot()] = true
	r.log = append(r.log, c)
}

// sync sends a random subset of from's changes, JSON-encoded as on the
// wire, in a random order, some twice.
func (s *sim) sync(from, to *simReplica) {
	t := s.t
	var batch []crdt.Change
	for _, c := range from.log {
		if rapid.Bool().Draw(t, "send") {
			batch = append(batch, c)
		}
	}
	if len(batch) > 0 && rapid.Bool().Draw(t, "dup") {
		batch = append(batch, batch[rapid.IntRange(0, len(batch)-1).Draw(t, "dupOf")])
	}
	batch = rapid.Permutation(batch).Draw(t, "order")
	b, err := crdt.EncodeChanges(batch)
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	got, err := crdt.DecodeChanges(b, crdt.DefaultLimits)
	if err != nil {
		t.Fatalf("decode of an encoded batch: %v\n%s", err, b)
	}
	if len(got) != len(batch) {
		t.Fatalf("decoded %d changes, sent %d", len(got), len(batch))
	}
	for _, c := range got {
		s.deliver(to, c)
	}
}

func (s *sim) checkView(r *simReplica, exact bool) {
	s.t.Helper()
	got := resolver.Render(simDoc, r.doc.Fields, nil)
	want := refView(r.log, exact)
	gb, _ := json.Marshal(got)
	wb, _ := json.Marshal(want)
	if !bytes.Equal(gb, wb) {
		s.t.Fatalf("replica %d view:\n got %s\nwant %s\nstate %s", slices.Index(s.reps, r), gb, wb, stateJSON(s.t, &r.doc))
	}
}

func TestMergeLaws(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		s := newSim(t)
		steps := rapid.IntRange(1, 60).Draw(t, "steps")
		for i := 0; i < steps; i++ {
			switch rapid.IntRange(0, 5).Draw(t, "action") {
			case 0, 1, 2:
				r := rapid.SampledFrom(s.reps).Draw(t, "writer")
				s.write(r)
				s.checkView(r, false)
			case 3, 4:
				from := rapid.SampledFrom(s.reps).Draw(t, "from")
				to := rapid.SampledFrom(s.reps).Draw(t, "to")
				if from != to {
					s.sync(from, to)
					s.checkView(to, false)
				}
			case 5:
				s.now += rapid.Int64Range(0, 5).Draw(t, "tick")
			}
		}

		// Dropped changes are redelivered: everyone gets everything, in
		// its own order, some twice.
		for _, r := range s.reps {
			for _, c := range rapid.Permutation(s.all).Draw(t, "final") {
				s.deliver(r, c)
				if rapid.IntRange(0, 9).Draw(t, "finalDup") == 0 {
					s.deliver(r, c)
				}
			}
		}
		base := applyAll(s.all)
		want := stateJSON(t, base)
		for i, r := range s.reps {
			if got := stateJSON(t, &r.doc); got != want {
				t.Fatalf("replica %d diverged:\n got %s\nwant %s", i, got, want)
			}
			// Once every change is in, superseded means named in a
			// context exactly: the per-origin marks must agree.
			s.checkView(r, true)
		}
		checkLWWNewest(t, s.all, base)
		checkLaws(t, s.all, want)
	})
}

// checkLWWNewest: an lww field shows the value of its newest set or
// resolve newer than the newest delete.
func checkLWWNewest(t *rapid.T, all []crdt.Change, doc *crdt.Doc) {
	v := resolver.Render(simDoc, doc.Fields, nil)
	del, _ := newestDelete(all)
	for _, f := range simFields {
		fc := fieldChanges(all, f)
		if len(fc) == 0 || v.Deleted || newest(fc).Kind != crdt.KindLWW {
			continue
		}
		var top *crdt.Change
		for i, c := range fc {
			if (c.Op == crdt.OpSet || c.Op == crdt.OpResolve) && (del == nil || stampLess(*del, c)) && (top == nil || stampLess(*top, c)) {
				top = &fc[i]
			}
		}
		switch {
		case top == nil && v.Fields[f] != nil:
			t.Fatalf("lww %s shows %s, want nothing", f, v.Fields[f])
		case top != nil && !bytes.Equal(v.Fields[f], top.Value):
			t.Fatalf("lww %s shows %s, want newest %s", f, v.Fields[f], top.Value)
		}
	}
}

// checkLaws: the state is a function of the set of changes.
func checkLaws(t *rapid.T, all []crdt.Change, want string) {
	// Commutativity and idempotence: any order, with duplicates.
	perm := rapid.Permutation(all).Draw(t, "perm")
	for _, c := range all {
		if rapid.IntRange(0, 3).Draw(t, "lawDup") == 0 {
			perm = slices.Insert(perm, rapid.IntRange(0, len(perm)).Draw(t, "at"), c)
		}
	}
	if got := stateJSON(t, applyAll(perm)); got != want {
		t.Fatalf("permuted with duplicates:\n got %s\nwant %s", got, want)
	}
	twice := applyAll(all)
	for _, c := range all {
		if twice.Apply(&c) {
			t.Fatalf("re-applying %v reported a change", c.Dot())
		}
	}
	if got := stateJSON(t, twice); got != want {
		t.Fatalf("applied twice:\n got %s\nwant %s", got, want)
	}

	// Associativity and commutativity of merging states, where merging
	// state Y into X applies Y's changes to X: (A+B)+C = A+(B+C) =
	// C+(B+A), and all equal the state of the union.
	var parts [3][]crdt.Change
	for _, c := range all {
		for i := range parts {
			if rapid.Bool().Draw(t, "inPart") {
				parts[i] = append(parts[i], c)
			}
		}
	}
	a, b, c := parts[0], parts[1], parts[2]
	union := dedupe(slices.Concat(a, b, c))
	left := applyAll(slices.Concat(a, b, c))
	right := applyAll(a)
	for _, ch := range dedupe(slices.Concat(b, c)) { // the changes state B+C holds
		right.Apply(&ch)
	}
	swapped := applyAll(slices.Concat(c, b, a))
	u := stateJSON(t, applyAll(union))
	for name, doc := range map[string]*crdt.Doc{"(A+B)+C": left, "A+(B+C)": right, "C+B+A": swapped} {
		if got := stateJSON(t, doc); got != u {
			t.Fatalf("%s:\n got %s\nwant %s", name, got, u)
		}
	}

	// A clone is equal and independent.
	cl := twice.Clone()
	if got := stateJSON(t, cl); got != want {
		t.Fatalf("clone:\n got %s\nwant %s", got, want)
	}
	extra := crdt.Change{ID: uuid.New(), Origin: uuid.MustParse("ffffffff-ffff-4fff-bfff-ffffffffffff"), Seq: 1, HLC: hlc.Make(1<<40, 0),
		NS: simNS, Coll: simColl, Doc: simDoc, Field: "a", Kind: crdt.KindLWW, Op: crdt.OpSet, Value: json.RawMessage(`1`)}
	if f := cl.Fields["a"]; f != nil {
		extra.Context = f.Reg().Dots()
	}
	cl.Apply(&extra)
	if got := stateJSON(t, twice); got != want {
		t.Fatalf("writing to a clone changed the original:\n got %s\nwant %s", got, want)
	}
}

func applyAll(cs []crdt.Change) *crdt.Doc {
	d := &crdt.Doc{}
	for i := range cs {
		c := cs[i]
		d.Apply(&c)
	}
	return d
}

// stateJSON is a document's merged state as canonical JSON, with nil and
// empty collections treated alike.
func stateJSON(t fataler, d *crdt.Doc) string {
	b, err := json.Marshal(d.Fields)
	if err != nil {
		t.Fatalf("marshal state: %v", err)
	}
	var x any
	if err := json.Unmarshal(b, &x); err != nil {
		t.Fatalf("unmarshal state: %v", err)
	}
	if x = dropEmpty(x); x == nil {
		return "{}" // a nil map is the empty state
	}
	b, _ = json.Marshal(x)
	return string(b)
}

func dropEmpty(x any) any {
	switch v := x.(type) {
	case map[string]any:
		for k, e := range v {
			e = dropEmpty(e)
			if isEmpty(e) {
				delete(v, k)
			} else {
				v[k] = e
			}
		}
	case []any:
		for i := range v {
			v[i] = dropEmpty(v[i])
		}
	}
	return x
}

func isEmpty(x any) bool {
	switch v := x.(type) {
	case nil:
		return true
	case []any:
		return len(v) == 0
	case map[string]any:
		return len(v) == 0
	}
	return false
}

// ---- The reference model, written from DESIGN.md and the package docs
// over a plain list of changes, with no incremental state.

func dedupe(cs []crdt.Change) []crdt.Change {
	seen := map[crdt.Dot]bool{}
	var out []crdt.Change
	for _, c := range cs {
		if !seen[c.Dot()] {
			seen[c.Dot()] = true
			out = append(out, c)
		}
	}
	return out
}

// stampLess orders changes by HLC, then by origin id as bytes.
func stampLess(a, b crdt.Change) bool {
	if a.HLC != b.HLC {
		return a.HLC < b.HLC
	}
	return bytes.Compare(a.Origin[:], b.Origin[:]) < 0
}

func newest(cs []crdt.Change) crdt.Change {
	n := cs[0]
	for _, c := range cs[1:] {
		if stampLess(n, c) {
			n = c
		}
	}
	return n
}

func newestDelete(cs []crdt.Change) (*crdt.Change, bool) {
	var del *crdt.Change
	for i, c := range cs {
		if c.Op == crdt.OpDelete && (del == nil || stampLess(*del, c)) {
			del = &cs[i]
		}
	}
	return del, del != nil
}

func fieldChanges(cs []crdt.Change, field string) []crdt.Change {
	var out []crdt.Change
	for _, c := range cs {
		if c.Op != crdt.OpDelete && c.Field == field {
			out = append(out, c)
		}
	}
	return out
}

// superseded reports whether some context among ops names dot d. Exactly,
// once every change is known; before that, a context naming a later dot
// of the same origin also supersedes d, since an origin's later write to
// the same register or element saw its earlier one.
func superseded(d crdt.Dot, ops []crdt.Change, exact bool) bool {
	for _, o := range ops {
		for _, x := range o.Context {
			if x.Replica == d.Replica && (x.Seq == d.Seq || !exact && x.Seq > d.Seq) {
				return true
			}
		}
	}
	return false
}

func refView(log []crdt.Change, exact bool) resolver.View {
	cs := dedupe(log)
	v := resolver.View{ID: simDoc, Fields: map[string]json.RawMessage{}, Conflicts: map[string][]resolver.Version{}}
	for _, c := range cs {
		v.Version = max(v.Version, c.HLC)
	}
	del, hasDel := newestDelete(cs)
	visible := func(c crdt.Change) bool { return !hasDel || stampLess(*del, c) }
	byField := map[string][]crdt.Change{}
	for _, c := range cs {
		if c.Op != crdt.OpDelete {
			byField[c.Field] = append(byField[c.Field], c)
		}
	}
	if hasDel {
		v.Deleted = true
		for _, fc := range byField {
			if visible(newest(fc)) {
				v.Deleted = false
			}
		}
		if v.Deleted {
			return v
		}
	}
	for f, fc := range byField {
		switch newest(fc).Kind {
		case crdt.KindCounter:
			v.Fields[f] = refCounter(fc, exact)
		case crdt.KindORSet:
			v.Fields[f] = refSet(fc, visible, exact)
		default:
			var regOps, sibs []crdt.Change
			for _, c := range fc {
				if c.Op == crdt.OpSet || c.Op == crdt.OpResolve {
					regOps = append(regOps, c)
				}
			}
			for _, c := range regOps {
				if !superseded(c.Dot(), regOps, exact) && visible(c) {
					sibs = append(sibs, c)
				}
			}
			if len(sibs) == 0 {
				continue
			}
			slices.SortFunc(sibs, func(a, b crdt.Change) int {
				if stampLess(b, a) {
					return -1
				}
				return 1
			})
			v.Fields[f] = sibs[0].Value
			var shown []crdt.Change
			if newest(fc).Kind == crdt.KindManual {
				if len(sibs) > 1 {
					shown = sibs
				}
			} else {
				shown = sibs[1:min(len(sibs), 1+resolver.MaxHistory)]
			}
			for _, s := range shown {
				v.Conflicts[f] = append(v.Conflicts[f], resolver.Version{Value: s.Value, Replica: s.Origin, HLC: s.HLC})
			}
		}
	}
	return v
}

func refSet(fc []crdt.Change, visible func(crdt.Change) bool, exact bool) json.RawMessage {
	byElem := map[string][]crdt.Change{}
	for _, c := range fc {
		if c.Op == crdt.OpAdd || c.Op == crdt.OpRemove {
			byElem[string(c.Value)] = append(byElem[string(c.Value)], c)
		}
	}
	var in []string
	for e, ops := range byElem {
		for _, c := range ops {
			if c.Op == crdt.OpAdd && !superseded(c.Dot(), ops, exact) && visible(c) {
				in = append(in, e)
				break
			}
		}
	}
	slices.Sort(in) // byte order of the canonical form
	out := "["
	for i, e := range in {
		if i > 0 {
			out += ","
		}
		out += e
	}
	return json.RawMessage(out + "]")
}

// refCounter sums exactly: every delta once everything is known; before
// that, each origin's newest running total. A sum past int64 shows
// clamped.
func refCounter(fc []crdt.Change, exact bool) json.RawMessage {
	sum := new(big.Int)
	latest := map[crdt.ReplicaID]crdt.Change{}
	for _, c := range fc {
		if c.Op != crdt.OpIncr {
			continue
		}
		if exact {
			sum.Add(sum, big.NewInt(c.Delta()))
		} else if l, ok := latest[c.Origin]; !ok || l.Seq < c.Seq {
			latest[c.Origin] = c
		}
	}
	for _, c := range latest {
		sum.Add(sum, big.NewInt(c.Total))
	}
	switch {
	case sum.Cmp(big.NewInt(math.MaxInt64)) > 0:
		sum.SetInt64(math.MaxInt64)
	case sum.Cmp(big.NewInt(math.MinInt64)) < 0:
		sum.SetInt64(math.MinInt64)
	}
	return json.RawMessage(sum.String())
}

func fits(x *big.Int) bool { return x.IsInt64() }
