package resolver_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/resolver"
)

func TestSchemaKindOf(t *testing.T) {
	s := resolver.Schema{Fields: map[string]crdt.Kind{"items": crdt.KindORSet, "stock": crdt.KindCounter, "odd": crdt.KindNone}}
	for f, want := range map[string]crdt.Kind{"items": crdt.KindORSet, "stock": crdt.KindCounter, "odd": crdt.KindLWW, "title": crdt.KindLWW} {
		if got := s.KindOf(f); got != want {
			t.Errorf("KindOf(%s) = %s, want %s", f, got, want)
		}
	}
	if got := (resolver.Schema{}).KindOf("x"); got != crdt.KindLWW {
		t.Errorf("empty schema: %s", got)
	}
}

func TestSchemaValidate(t *testing.T) {
	ok := resolver.Schema{Fields: map[string]crdt.Kind{"items": crdt.KindORSet, "a.b:c-d_e": crdt.KindManual, strings.Repeat("f", 64): crdt.KindLWW}}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid schema: %v", err)
	}
	if err := (resolver.Schema{}).Validate(); err != nil {
		t.Fatalf("empty schema: %v", err)
	}
	for name, tc := range map[string]struct {
		s    resolver.Schema
		want error
	}{
		"empty field name":    {resolver.Schema{Fields: map[string]crdt.Kind{"": crdt.KindLWW}}, crdt.ErrBadName},
		"field name of 65":    {resolver.Schema{Fields: map[string]crdt.Kind{strings.Repeat("f", 65): crdt.KindLWW}}, crdt.ErrBadName},
		"field name with a /": {resolver.Schema{Fields: map[string]crdt.Kind{"a/b": crdt.KindLWW}}, crdt.ErrBadName},
		"no kind":             {resolver.Schema{Fields: map[string]crdt.Kind{"a": crdt.KindNone}}, crdt.ErrUnknownKind},
		"kind out of range":   {resolver.Schema{Fields: map[string]crdt.Kind{"a": crdt.Kind(9)}}, crdt.ErrUnknownKind},
	} {
		if err := tc.s.Validate(); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", name, err, tc.want)
		}
	}

	// On the wire kinds are names; an unknown one is refused.
	var s resolver.Schema
	if err := json.Unmarshal([]byte(`{"fields":{"items":"orset","title":"manual","stock":"counter"}}`), &s); err != nil {
		t.Fatal(err)
	}
	if s.KindOf("items") != crdt.KindORSet || s.KindOf("title") != crdt.KindManual || s.KindOf("stock") != crdt.KindCounter {
		t.Fatalf("decoded %v", s.Fields)
	}
	b, _ := json.Marshal(s)
	if string(b) != `{"fields":{"items":"orset","stock":"counter","title":"manual"}}` {
		t.Fatalf("encoded %s", b)
	}
	if err := json.Unmarshal([]byte(`{"fields":{"x":"blob"}}`), &s); !errors.Is(err, crdt.ErrUnknownKind) {
		t.Fatalf("unknown kind name: %v", err)
	}
}

func TestSchemaOps(t *testing.T) {
	old := resolver.Schema{Fields: map[string]crdt.Kind{"a": crdt.KindORSet, "b": crdt.KindCounter, "c": crdt.KindManual, "e": crdt.KindLWW}}
	next := resolver.Schema{Fields: map[string]crdt.Kind{"a": crdt.KindORSet, "b": crdt.KindManual, "d": crdt.KindCounter}}
	ops := resolver.SchemaOps("items", old, next)
	type w struct{ field, value string }
	var got []w
	for _, op := range ops {
		if op.Coll != resolver.SchemaColl || op.Doc != "items" || op.Op != crdt.OpSet {
			t.Fatalf("op %+v does not write the schema document", op)
		}
		got = append(got, w{op.Field, string(op.Value)})
	}
	// a unchanged; e dropped but already lww: no write.
	want := []w{{"b", `"manual"`}, {"c", `"lww"`}, {"d", `"counter"`}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ops %v, want %v", got, want)
	}
	if ops := resolver.SchemaOps("items", next, next); len(ops) != 0 {
		t.Fatalf("no change, ops %v", ops)
	}

	// Written as the replica writes them, they read back as the new
	// schema: every field has the kind next gives it.
	d := newDoc(t)
	var seq uint64
	write := func(ops []resolver.Op) {
		for _, op := range ops {
			seq++
			c := d.change(us, seq, int64(100+seq), op.Field, crdt.KindLWW, op.Op, string(op.Value))
			c.Coll, c.Doc = op.Coll, op.Doc
			d.write1(c)
		}
	}
	write(resolver.SchemaOps("items", resolver.Schema{}, old))
	if s := resolver.SchemaFromDoc(d.Fields); !sameKinds(s, old) {
		t.Fatalf("first schema read back as %v", s.Fields)
	}
	write(ops)
	if s := resolver.SchemaFromDoc(d.Fields); !sameKinds(s, next) {
		t.Fatalf("second schema read back as %v, want kinds of %v", s.Fields, next.Fields)
	}
}

// write1 prepares a change as lww against this document and applies it.
func (d *doc) write1(c crdt.Change) {
	d.t.Helper()
	if err := resolver.For(c.Kind).Prepare(d.Fields[c.Field], &c); err != nil {
		d.t.Fatal(err)
	}
	d.apply(c)
}

func sameKinds(a, b resolver.Schema) bool {
	for _, s := range []resolver.Schema{a, b} {
		for f := range s.Fields {
			if a.KindOf(f) != b.KindOf(f) {
				return false
			}
		}
	}
	return true
}

func TestSchemaFromDoc(t *testing.T) {
	d := newDoc(t)
	d.write(us, 1, 100, "items", crdt.KindLWW, crdt.OpSet, `"orset"`)
	d.write(us, 2, 101, "junk", crdt.KindLWW, crdt.OpSet, `"blob"`) // not a kind
	d.write(us, 3, 102, "num", crdt.KindLWW, crdt.OpSet, `3`)       // not a string
	d.write(us, 4, 103, "title", crdt.KindLWW, crdt.OpSet, `"manual"`)
	d.apply(d.change(eu, 1, 103, "title", crdt.KindLWW, crdt.OpSet, `"counter"`)) // concurrent: newest wins
	s := resolver.SchemaFromDoc(d.Fields)
	want := map[string]crdt.Kind{"items": crdt.KindORSet, "title": crdt.KindCounter}
	if !reflect.DeepEqual(s.Fields, want) {
		t.Fatalf("schema %v, want %v", s.Fields, want)
	}
	// A deleted schema document is the default schema until rewritten.
	d.delete(ap, 1, 200)
	if s := resolver.SchemaFromDoc(d.Fields); len(s.Fields) != 0 {
		t.Fatalf("deleted schema %v", s.Fields)
	}
	d.write(us, 5, 300, "stock", crdt.KindLWW, crdt.OpSet, `"counter"`)
	if s := resolver.SchemaFromDoc(d.Fields); !reflect.DeepEqual(s.Fields, map[string]crdt.Kind{"stock": crdt.KindCounter}) {
		t.Fatalf("rewritten schema %v", s.Fields)
	}
	if s := resolver.SchemaFromDoc(nil); s.Fields == nil || len(s.Fields) != 0 {
		t.Fatalf("no document: %v", s.Fields)
	}
}

func TestIsReserved(t *testing.T) {
	if !resolver.IsReserved(resolver.SchemaColl) || !resolver.IsReserved("_x") || resolver.IsReserved("items") || resolver.IsReserved("a_") {
		t.Fatal("IsReserved")
	}
}
