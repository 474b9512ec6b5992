package crdt_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/resolver"
)

// The apply benchmarks time what every replica does most: merge a change
// from elsewhere into its field states. The changes are made beforehand
// the way replicas make them — several writers, each preparing its op
// through the kind's resolver policy against its own state, exchanging
// everything they made every so often — so contexts, siblings, set tags
// and counter totals are the ones real traffic carries. The timer covers
// only applying them, in the order they were made, into fresh state.

// workload says what the writers do.
type workload struct {
	kinds   []crdt.Kind // each op picks one of these, uniformly
	writers int
	docs    int // ops pick a document uniformly
	ops     int
	every   int // all writers exchange everything after this many ops
	seed    uint64
}

// fieldOf is the field a kind writes in a benchmark document: one field
// per kind, as in a product document with a title, notes, a cart and a
// stock count.
var fieldOf = map[crdt.Kind]string{
	crdt.KindLWW: "title", crdt.KindManual: "notes", crdt.KindORSet: "cart", crdt.KindCounter: "stock",
}

type writer struct {
	id     crdt.ReplicaID
	seq    uint64
	clock  *hlc.Clock
	fields map[crdt.FieldKey]*crdt.Field
	seen   int // how much of the global change list it has applied
}

// changes runs the workload and returns every change in the order made,
// and one writer's final state after a last full exchange (every writer
// holds the same by then).
func (w workload) changes() ([]crdt.Change, map[crdt.FieldKey]*crdt.Field) {
	rng := rand.New(rand.NewPCG(w.seed, 1))
	phys := hlc.NewManualClock(1_700_000_000_000)
	ws := make([]*writer, w.writers)
	for i := range ws {
		ws[i] = &writer{
			id:     crdt.ReplicaID{0xd0, byte(i + 1)},
			clock:  hlc.NewClock(phys.Now, 0),
			fields: map[crdt.FieldKey]*crdt.Field{},
		}
	}
	docs := make([]string, w.docs)
	for i := range docs {
		docs[i] = "p" + strconv.Itoa(i)
	}
	all := make([]crdt.Change, 0, w.ops)
	exchange := func() {
		for _, wr := range ws {
			for ; wr.seen < len(all); wr.seen++ {
				c := &all[wr.seen]
				if c.Origin == wr.id {
					continue
				}
				_ = wr.clock.Update(c.HLC)
				wr.field(c.Key()).Apply(c)
			}
		}
	}
	for n := 0; n < w.ops; n++ {
		if n > 0 && n%w.every == 0 {
			exchange()
		}
		if n%50 == 0 {
			phys.Advance(time.Millisecond)
		}
		wr := ws[rng.IntN(len(ws))]
		k := w.kinds[rng.IntN(len(w.kinds))]
		c := crdt.Change{
			NS: "bench", Coll: "products", Doc: docs[rng.IntN(len(docs))], Field: fieldOf[k], Kind: k,
			Origin: wr.id,
		}
		switch k {
		case crdt.KindLWW:
			c.Op, c.Value = crdt.OpSet, []byte(`"title `+strconv.Itoa(n)+`"`)
		case crdt.KindManual:
			c.Op, c.Value = crdt.OpSet, []byte(`"note `+strconv.Itoa(n)+`"`)
			if rng.IntN(5) == 0 {
				c.Op = crdt.OpResolve
			}
		case crdt.KindORSet:
			c.Op, c.Value = crdt.OpAdd, []byte(`"sku-`+strconv.Itoa(rng.IntN(12))+`"`)
			if rng.IntN(3) == 0 {
				c.Op = crdt.OpRemove
			}
		case crdt.KindCounter:
			c.Op, c.Value = crdt.OpIncr, []byte(strconv.Itoa(rng.IntN(9)-3))
		}
		f := wr.field(c.Key())
		if err := resolver.For(k).Prepare(f, &c); err != nil {
			panic(fmt.Sprintf("prepare %s %s: %v", k, c.Op, err))
		}
		wr.seq++
		c.Seq, c.HLC = wr.seq, wr.clock.Now()
		c.ID = uuid.UUID{0xc0, byte(n >> 16), byte(n >> 8), byte(n), 0, 0, 0x40, 0, 0x80}
		f.Apply(&c)
		all = append(all, c)
	}
	exchange()
	return all, ws[0].fields
}

func (wr *writer) field(k crdt.FieldKey) *crdt.Field {
	f := wr.fields[k]
	if f == nil {
		f = &crdt.Field{}
		wr.fields[k] = f
	}
	return f
}

// store is the smallest in-memory store: field states by key.
type store map[crdt.FieldKey]*crdt.Field

func (s store) apply(c *crdt.Change) {
	k := c.Key()
	f := s[k]
	if f == nil {
		f = &crdt.Field{}
		s[k] = f
	}
	f.Apply(c)
}

var benchKinds = []struct {
	name  string
	kinds []crdt.Kind
}{
	{"lww", []crdt.Kind{crdt.KindLWW}},
	{"manual", []crdt.Kind{crdt.KindManual}},
	{"orset", []crdt.Kind{crdt.KindORSet}},
	{"counter", []crdt.Kind{crdt.KindCounter}},
	{"mixed", []crdt.Kind{crdt.KindLWW, crdt.KindManual, crdt.KindORSet, crdt.KindCounter}},
}

// BenchmarkApply applies 100,000 changes made by 4 writers (exchanging
// every 1,000 ops) into a fresh store, per kind and mixed, on 1,000
// documents (hot: ~100 changes per field, conflicts frequent) and on
// 100,000 documents (cold: most changes create their field).
func BenchmarkApply(b *testing.B) {
	for _, docs := range []int{1_000, 100_000} {
		for _, bk := range benchKinds {
			b.Run(fmt.Sprintf("kind=%s/docs=%d", bk.name, docs), func(b *testing.B) {
				w := workload{kinds: bk.kinds, writers: 4, docs: docs, ops: 100_000, every: 1_000, seed: 1}
				cs, _ := w.changes()
				b.ReportAllocs()
				for b.Loop() {
					s := store{}
					for i := range cs {
						s.apply(&cs[i])
					}
				}
				n := float64(len(cs)) * float64(b.N)
				b.ReportMetric(n/b.Elapsed().Seconds(), "changes/s")
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/n, "ns/change")
			})
		}
	}
}

// TestApplyWorkloadConverges checks the benchmark measures real merging:
// applying the writers' changes in the order made gives exactly the state
// each writer reached by exchanging them, for every kind.
func TestApplyWorkloadConverges(t *testing.T) {
	for _, bk := range benchKinds {
		w := workload{kinds: bk.kinds, writers: 4, docs: 50, ops: 5_000, every: 100, seed: 7}
		cs, want := w.changes()
		s := store{}
		for i := range cs {
			s.apply(&cs[i])
		}
		if !reflect.DeepEqual(map[crdt.FieldKey]*crdt.Field(s), want) {
			t.Errorf("%s: applying the changes in order does not give the writers' state", bk.name)
		}
		// Concurrency must show in the state, or the workload is too tame.
		concurrent := 0
		for _, f := range s {
			if len(f.Reg().Sibs) > 1 || (f.Ctr() != nil && len(f.Ctr().Parts) > 1) {
				concurrent++
			}
			if f.Set() != nil {
				for _, e := range f.Set().Elems {
					if len(e.Adds) > 1 {
						concurrent++
					}
				}
			}
		}
		if concurrent == 0 {
			t.Errorf("%s: no field holds concurrent writes", bk.name)
		}
	}
}

// refCanonical is Canonical without its fast path: decode, re-encode.
func refCanonical(v []byte) ([]byte, bool) {
	if crdt.CheckDepth(v, crdt.DefaultLimits.MaxDepth) != nil {
		return nil, false
	}
	dec := json.NewDecoder(bytes.NewReader(v))
	dec.UseNumber()
	var x any
	if dec.Decode(&x) != nil || dec.More() {
		return nil, false
	}
	var buf bytes.Buffer
	if json.NewEncoder(&buf).Encode(x) != nil {
		return nil, false
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), true
}

// TestCanonicalFastPath checks that the shortcuts taken for speed (plain
// scalars in Canonical and CheckValue, plain integers as counter deltas)
// answer exactly as the decoder they skip, on values built from the
// characters where JSON's grammar and escaping have their edges.
func TestCanonicalFastPath(t *testing.T) {
	vals := []string{`"a"`, `""`, `"a<b"`, `"a&b"`, `"é"`, `"\u00e9"`, `"a\"b"`, `"\n"`, "\"\t\"", `"a`, `"`,
		`0`, `-0`, `01`, `-`, `1.`, `.5`, `1.5`, `1e5`, `1E+5`, `1e`, `-1.5e-7`, `+1`, `1 `, ` 1`, `0x1`,
		`true`, `false`, `null`, `nul`, `truex`, `[1]`, `{"b":1,"a":2}`, `9223372036854775807`,
		`9223372036854775808`, `-9223372036854775808`, `1_0`, ``}
	rng := rand.New(rand.NewPCG(2, 3))
	const alpha = "0123456789-+.eE\"\\<>&a tnul\x01é"
	for range 10_000 {
		b := make([]byte, 1+rng.IntN(6))
		for i := range b {
			b[i] = alpha[rng.IntN(len(alpha))]
		}
		vals = append(vals, string(b))
	}
	for _, s := range vals {
		v := []byte(s)
		want, ok := refCanonical(v)
		got, err := crdt.Canonical(v, crdt.DefaultLimits)
		if ok != (err == nil) || !bytes.Equal(got, want) {
			t.Fatalf("Canonical(%q) = %q, %v; decoding and re-encoding gives %q, ok=%v", s, got, err, want, ok)
		}
		if err := crdt.CheckValue(v, crdt.DefaultLimits); (err == nil) != (ok && bytes.Equal(want, v)) {
			t.Fatalf("CheckValue(%q) = %v, canonical form %q", s, err, want)
		}
		var d int64
		uerr := json.Unmarshal(v, &d)
		c := crdt.Change{Op: crdt.OpIncr, Value: v}
		if uerr == nil && c.Delta() != d {
			t.Fatalf("Delta(%q) = %d, json.Unmarshal gives %d", s, c.Delta(), d)
		}
		c = crdt.Change{ID: uuid.UUID{1}, Origin: uuid.UUID{2}, Seq: 1, HLC: 1, NS: "n", Coll: "c", Doc: "d",
			Field: "f", Kind: crdt.KindCounter, Op: crdt.OpIncr, Value: v}
		if verr := c.Validate(crdt.DefaultLimits); (verr == nil) != (uerr == nil && ok && bytes.Equal(want, v)) {
			t.Fatalf("Validate(incr %q) = %v; json.Unmarshal: %v", s, verr, uerr)
		}
	}
}

// TestCloneIsIndependent checks Field.Clone, which a replica relies on for
// copy-on-write: merging into a clone gives the same state as merging into
// the original would, and leaves the original untouched.
func TestCloneIsIndependent(t *testing.T) {
	for _, bk := range benchKinds {
		w := workload{kinds: bk.kinds, writers: 4, docs: 5, ops: 4_000, every: 50, seed: 11}
		cs, _ := w.changes()
		orig, want := store{}, store{}
		for i := range cs {
			want.apply(&cs[i])
			if i < len(cs)/2 {
				orig.apply(&cs[i])
			}
		}
		before := snapshot(t, orig)
		clones := store{}
		for k, f := range orig {
			clones[k] = f.Clone()
		}
		for i := len(cs) / 2; i < len(cs); i++ {
			clones.apply(&cs[i])
		}
		if !reflect.DeepEqual(clones, want) {
			t.Errorf("%s: merging into clones differs from merging into the originals", bk.name)
		}
		if after := snapshot(t, orig); after != before {
			t.Errorf("%s: merging into clones changed the originals", bk.name)
		}
	}
}

// snapshot encodes a store in key order.
func snapshot(t *testing.T, s store) string {
	keys := make([]crdt.FieldKey, 0, len(s))
	for k := range s {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b crdt.FieldKey) int { return strings.Compare(a.String(), b.String()) })
	var out []byte
	for _, k := range keys {
		b, err := json.Marshal(s[k])
		if err != nil {
			t.Fatal(err)
		}
		out = append(append(out, k.String()...), b...)
	}
	return string(out)
}
