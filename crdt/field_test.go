package crdt_test

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/google/uuid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
)

// fieldsForJSON builds one field of each form a state can take.
func fieldsForJSON() map[string]*crdt.Field {
	a, b := uuid.UUID{0xa}, uuid.UUID{0xb}
	ch := func(o crdt.ReplicaID, seq uint64, ts int64, k crdt.Kind, op crdt.Op, v string, ctx ...crdt.Dot) *crdt.Change {
		return &crdt.Change{Origin: o, Seq: seq, HLC: hlc.Timestamp(ts), Kind: k, Op: op, Value: []byte(v), Context: ctx, Total: int64(seq)}
	}
	out := map[string]*crdt.Field{}
	apply := func(name string, cs ...*crdt.Change) {
		f := &crdt.Field{}
		for _, c := range cs {
			f.Apply(c)
		}
		out[name] = f
	}
	apply("empty")
	apply("deleted", ch(a, 1, 10, crdt.KindNone, crdt.OpDelete, ""))
	apply("one", ch(a, 1, 10, crdt.KindLWW, crdt.OpSet, `"x"`))
	apply("two", ch(a, 1, 10, crdt.KindLWW, crdt.OpSet, `"x"`), ch(b, 1, 11, crdt.KindManual, crdt.OpSet, `"y"`))
	apply("superseded", ch(a, 1, 10, crdt.KindLWW, crdt.OpSet, `"x"`), ch(b, 1, 11, crdt.KindLWW, crdt.OpSet, `"y"`, crdt.Dot{Replica: a, Seq: 1}))
	apply("set", ch(a, 1, 10, crdt.KindORSet, crdt.OpAdd, `"p"`), ch(b, 1, 11, crdt.KindORSet, crdt.OpAdd, `"q"`), ch(b, 2, 12, crdt.KindORSet, crdt.OpRemove, `"p"`, crdt.Dot{Replica: a, Seq: 1}))
	apply("counter", ch(a, 1, 10, crdt.KindCounter, crdt.OpIncr, `1`), ch(b, 3, 11, crdt.KindCounter, crdt.OpIncr, `3`))
	apply("all", ch(a, 1, 10, crdt.KindLWW, crdt.OpSet, `"x"`), ch(b, 1, 11, crdt.KindORSet, crdt.OpAdd, `"q"`), ch(b, 2, 12, crdt.KindCounter, crdt.OpIncr, `2`))
	apply("reg+ctr", ch(a, 1, 10, crdt.KindCounter, crdt.OpIncr, `1`), ch(b, 1, 11, crdt.KindLWW, crdt.OpSet, `"x"`))
	return out
}

// fieldsJSON is what fieldsForJSON encoded to before Field kept one
// reference to the state of its kind (commit 57d543b): stores, snapshots
// and the wire hold this form.
const fieldsJSON = `{"all":{"last":{"hlc":"000000000000000c","replica":"0b000000-0000-0000-0000-000000000000"},"last_kind":"counter","reg":{"sibs":[{"dot":{"replica":"0a000000-0000-0000-0000-000000000000","seq":1},"hlc":"000000000000000a","value":"x"}]},"set":{"elems":[{"value":"q","adds":[{"dot":{"replica":"0b000000-0000-0000-0000-000000000000","seq":1},"hlc":"000000000000000b"}]}]},"ctr":{"parts":[{"replica":"0b000000-0000-0000-0000-000000000000","seq":2,"total":2,"hlc":"000000000000000c"}]}},"counter":{"last":{"hlc":"000000000000000b","replica":"0b000000-0000-0000-0000-000000000000"},"last_kind":"counter","reg":{},"ctr":{"parts":[{"replica":"0a000000-0000-0000-0000-000000000000","seq":1,"total":1,"hlc":"000000000000000a"},{"replica":"0b000000-0000-0000-0000-000000000000","seq":3,"total":3,"hlc":"000000000000000b"}]}},"deleted":{"last":{"hlc":"000000000000000a","replica":"0a000000-0000-0000-0000-000000000000"},"reg":{}},"empty":{"last":{"hlc":"0000000000000000","replica":"00000000-0000-0000-0000-000000000000"},"reg":{}},"one":{"last":{"hlc":"000000000000000a","replica":"0a000000-0000-0000-0000-000000000000"},"last_kind":"lww","reg":{"sibs":[{"dot":{"replica":"0a000000-0000-0000-0000-000000000000","seq":1},"hlc":"000000000000000a","value":"x"}]}},"reg+ctr":{"last":{"hlc":"000000000000000b","replica":"0b000000-0000-0000-0000-000000000000"},"last_kind":"lww","reg":{"sibs":[{"dot":{"replica":"0b000000-0000-0000-0000-000000000000","seq":1},"hlc":"000000000000000b","value":"x"}]},"ctr":{"parts":[{"replica":"0a000000-0000-0000-0000-000000000000","seq":1,"total":1,"hlc":"000000000000000a"}]}},"set":{"last":{"hlc":"000000000000000c","replica":"0b000000-0000-0000-0000-000000000000"},"last_kind":"orset","reg":{},"set":{"elems":[{"value":"p","dead":[{"replica":"0a000000-0000-0000-0000-000000000000","seq":1}]},{"value":"q","adds":[{"dot":{"replica":"0b000000-0000-0000-0000-000000000000","seq":1},"hlc":"000000000000000b"}]}]}},"superseded":{"last":{"hlc":"000000000000000b","replica":"0b000000-0000-0000-0000-000000000000"},"last_kind":"lww","reg":{"sibs":[{"dot":{"replica":"0b000000-0000-0000-0000-000000000000","seq":1},"hlc":"000000000000000b","value":"y"}],"dead":[{"replica":"0a000000-0000-0000-0000-000000000000","seq":1}]}},"two":{"last":{"hlc":"000000000000000b","replica":"0b000000-0000-0000-0000-000000000000"},"last_kind":"manual","reg":{"sibs":[{"dot":{"replica":"0b000000-0000-0000-0000-000000000000","seq":1},"hlc":"000000000000000b","value":"y"},{"dot":{"replica":"0a000000-0000-0000-0000-000000000000","seq":1},"hlc":"000000000000000a","value":"x"}]}}}`

// TestFieldJSONUnchanged checks that the compact layout encodes every form
// of a field byte for byte as the layout it replaced, and decodes back to
// an equal state.
func TestFieldJSONUnchanged(t *testing.T) {
	fs := fieldsForJSON()
	b, err := json.Marshal(fs)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != fieldsJSON {
		t.Fatalf("fields encode as\n%s\nwant\n%s", b, fieldsJSON)
	}
	var back map[string]*crdt.Field
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, fs) {
		t.Fatalf("decoding gives another state")
	}
}

// TestNewField checks that NewField is applying the change to an empty
// field, for every op, with and without a context, and that the field it
// makes merges on as one made by Apply does.
func TestNewField(t *testing.T) {
	a, b := uuid.UUID{0xa}, uuid.UUID{0xb}
	ctx := []crdt.Dot{{Replica: b, Seq: 3}}
	var cs []crdt.Change
	for _, k := range []crdt.Kind{crdt.KindLWW, crdt.KindManual, crdt.KindORSet, crdt.KindCounter, crdt.KindNone} {
		for _, op := range []crdt.Op{crdt.OpSet, crdt.OpResolve, crdt.OpAdd, crdt.OpRemove, crdt.OpIncr, crdt.OpDelete} {
			for _, cx := range [][]crdt.Dot{nil, ctx} {
				cs = append(cs,
					crdt.Change{Origin: a, Seq: 1, HLC: 10, Kind: k, Op: op, Value: []byte(`"x"`), Context: cx, Total: 2},
					crdt.Change{Kind: k, Op: op, Value: []byte(`1`), Context: cx}) // zero stamp
			}
		}
	}
	// A change whose context covers its own dot.
	cs = append(cs, crdt.Change{Origin: b, Seq: 2, HLC: 11, Kind: crdt.KindORSet, Op: crdt.OpAdd, Value: []byte(`"y"`), Context: ctx})
	next := []crdt.Change{
		{Origin: b, Seq: 5, HLC: 20, Kind: crdt.KindLWW, Op: crdt.OpSet, Value: []byte(`"z"`), Context: []crdt.Dot{{Replica: a, Seq: 1}}},
		{Origin: b, Seq: 6, HLC: 21, Kind: crdt.KindORSet, Op: crdt.OpAdd, Value: []byte(`"x"`)},
		{Origin: b, Seq: 7, HLC: 22, Kind: crdt.KindORSet, Op: crdt.OpRemove, Value: []byte(`"x"`), Context: []crdt.Dot{{Replica: a, Seq: 1}}},
		{Origin: b, Seq: 8, HLC: 23, Kind: crdt.KindCounter, Op: crdt.OpIncr, Value: []byte(`4`), Total: 4},
	}
	for i := range cs {
		c := &cs[i]
		want := &crdt.Field{}
		want.Apply(c)
		got := crdt.NewField(c)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("NewField(%s %s, context %v) = %+v, applying it to an empty field gives %+v", c.Kind, c.Op, c.Context, got.State(), want.State())
		}
		for j := range next {
			if gc, wc := got.Apply(&next[j]), want.Apply(&next[j]); gc != wc || !reflect.DeepEqual(got, want) {
				t.Fatalf("after NewField(%s %s), applying %s %s gives %+v (changed %v), not %+v (changed %v)",
					c.Kind, c.Op, next[j].Kind, next[j].Op, got.State(), gc, want.State(), wc)
			}
		}
	}
}
