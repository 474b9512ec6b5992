package crdt_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/internal/workload"
)

// The apply benchmarks time what every replica does most: merge a change
// from elsewhere into its field states. The changes are made beforehand
// the way replicas make them (internal/workload); the timer covers only
// applying them, in the order they were made, into fresh state.

// store is the smallest in-memory store: field states by key. It hashes
// the four strings of a field key for every change; the apply benchmark
// keeps it as its "store=fieldmap" variant, for comparison with the
// figures measured on it before.
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

// memStore has the layout of replica.MemStorage, the store the browser and
// the simulator apply into (crdt cannot import replica, so it is mirrored
// here and must follow it): per collection, per document id, the
// document's fields sorted by name. A change costs one hash of the
// collection and one of the document id, not one of the whole field key,
// and a new field replaces the document's slice by one of the exact new
// size, as MemStorage.putFields does. A new field is made by
// crdt.NewField, as the replica makes the fields it hands MemStorage.
type memStore struct {
	colls map[memColl]map[string][]memField
	// The collection looked up last, as MemStorage.coll keeps it.
	last     memColl
	lastDocs map[string][]memField
}

func newMemStore() *memStore { return &memStore{colls: map[memColl]map[string][]memField{}} }

type memColl struct{ ns, coll string }

type memField struct {
	name  string
	state *crdt.Field
}

// findField is MemStorage's find.
func findField(fs []memField, name string) (int, bool) {
	return slices.BinarySearchFunc(fs, name, func(f memField, n string) int { return strings.Compare(f.name, n) })
}

func (s *memStore) apply(c *crdt.Change) {
	ck := memColl{c.NS, c.Coll}
	docs := s.lastDocs
	if docs == nil || ck != s.last {
		if docs = s.colls[ck]; docs == nil {
			docs = map[string][]memField{}
			s.colls[ck] = docs
		}
		s.last, s.lastDocs = ck, docs
	}
	fs := docs[c.Doc]
	i, ok := findField(fs, c.Field)
	if ok {
		fs[i].state.Apply(c)
		return
	}
	out := make([]memField, len(fs), len(fs)+1)
	copy(out, fs)
	docs[c.Doc] = slices.Insert(out, i, memField{c.Field, crdt.NewField(c)})
}

// fields lists the store's fields by key, the form the workload's
// converged state comes in.
func (s *memStore) fields() map[crdt.FieldKey]*crdt.Field {
	out := map[crdt.FieldKey]*crdt.Field{}
	for ck, docs := range s.colls {
		for id, fs := range docs {
			for _, f := range fs {
				out[crdt.FieldKey{NS: ck.ns, Coll: ck.coll, Doc: id, Field: f.name}] = f.state
			}
		}
	}
	return out
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
// 100,000 documents (cold: most changes create their field). Each case
// runs on two stores: "memstorage", the layout of the product's in-memory
// store (see memStore), which is the figure that counts, and "fieldmap",
// one map entry per field, the store these figures were first measured on.
func BenchmarkApply(b *testing.B) {
	stores := []struct {
		name string
		run  func(cs []crdt.Change)
	}{
		{"memstorage", func(cs []crdt.Change) {
			s := newMemStore()
			for i := range cs {
				s.apply(&cs[i])
			}
		}},
		{"fieldmap", func(cs []crdt.Change) {
			s := store{}
			for i := range cs {
				s.apply(&cs[i])
			}
		}},
	}
	for _, docs := range []int{1_000, 100_000} {
		for _, bk := range benchKinds {
			// Made once for both stores, and only if a store's case runs.
			var cs []crdt.Change
			for _, st := range stores {
				b.Run(fmt.Sprintf("kind=%s/docs=%d/store=%s", bk.name, docs, st.name), func(b *testing.B) {
					if cs == nil {
						w := workload.Config{Kinds: bk.kinds, Writers: 4, Docs: docs, Ops: 100_000, Every: 1_000, Seed: 1}
						cs, _ = w.Changes()
					}
					b.ReportAllocs()
					for b.Loop() {
						st.run(cs)
					}
					n := float64(len(cs)) * float64(b.N)
					b.ReportMetric(n/b.Elapsed().Seconds(), "changes/s")
					b.ReportMetric(float64(b.Elapsed().Nanoseconds())/n, "ns/change")
				})
			}
		}
	}
}

// TestApplyWorkloadConverges checks the benchmark measures real merging:
// applying the writers' changes in the order made gives exactly the state
// each writer reached by exchanging them, for every kind.
func TestApplyWorkloadConverges(t *testing.T) {
	for _, bk := range benchKinds {
		w := workload.Config{Kinds: bk.kinds, Writers: 4, Docs: 50, Ops: 5_000, Every: 100, Seed: 7}
		cs, want := w.Changes()
		s, ms := store{}, newMemStore()
		for i := range cs {
			s.apply(&cs[i])
			ms.apply(&cs[i])
		}
		if !reflect.DeepEqual(map[crdt.FieldKey]*crdt.Field(s), want) {
			t.Errorf("%s: applying the changes in order does not give the writers' state", bk.name)
		}
		if !reflect.DeepEqual(ms.fields(), want) {
			t.Errorf("%s: applying the changes in order into a memStore does not give the writers' state", bk.name)
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
		w := workload.Config{Kinds: bk.kinds, Writers: 4, Docs: 5, Ops: 4_000, Every: 50, Seed: 11}
		cs, _ := w.Changes()
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
