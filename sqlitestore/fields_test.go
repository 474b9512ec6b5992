package sqlitestore

import (
	"fmt"
	"reflect"
	"slices"
	"testing"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/replica"
)

// TestFieldsMatchesField: the batched read gives, for every key, what a
// point read gives, whichever way it reads a document: by key (few
// fields asked), as one range (many asked), or by key again when the
// document has many more fields than asked.
func TestFieldsMatchesField(t *testing.T) {
	s := openTest(t, Options{KeepLog: true})
	var cs []crdt.Change
	seq := uint64(0)
	// small: 10 fields; big: 100 fields; few: 3 fields.
	for doc, n := range map[string]int{"small": 10, "big": 100, "few": 3} {
		for i := 0; i < n; i++ {
			seq++
			c := own(regA, seq, doc, fmt.Sprintf("f%02d", i), fmt.Sprint(i))
			c.NS = "ns"
			cs = append(cs, c)
		}
	}
	ups := fieldsOf(cs...)
	save(t, s, &replica.Ready{NS: "ns", Fields: ups})
	st := s.Storage("ns")
	var keys []crdt.FieldKey
	key := func(doc string, i int) crdt.FieldKey {
		return crdt.FieldKey{NS: "ns", Coll: "items", Doc: doc, Field: fmt.Sprintf("f%02d", i)}
	}
	for i := 0; i < 12; i++ { // 10 held, 2 not: a range read
		keys = append(keys, key("small", i))
	}
	for i := 0; i < 100; i += 10 { // 10 of 100: too few for the range
		keys = append(keys, key("big", i))
	}
	for i := 0; i < 4; i++ { // by key
		keys = append(keys, key("few", i))
	}
	for i := 0; i < 9; i++ { // a new document
		keys = append(keys, key("new", i))
	}
	keys = append(keys, key("small", 3)) // asked twice
	// Keys no store can hold (Save refuses such names) are read as
	// absent, not as an error: they travel as JSON text, and must not
	// break it.
	for _, doc := range []string{`q"uote`, `back\slash`, `"`, `\`, "café", "\xff\xfe", `\u0041`} {
		keys = append(keys, key(doc, 0))
	}
	got, err := st.(replica.FieldBatcher).Fields(keys)
	if err != nil {
		t.Fatal(err)
	}
	held := 0
	for _, k := range keys {
		want, err := st.Field(k)
		if err != nil {
			t.Fatal(err)
		}
		if want != nil {
			held++
		}
		if !reflect.DeepEqual(got[k], want) {
			t.Errorf("%s: Fields gave %+v, Field gives %+v", k, got[k], want)
		}
	}
	if held != 24 || len(got) != 23 {
		t.Fatalf("%d keys held, %d read; want 24 and 23 (one asked twice)", held, len(got))
	}
}

// FuzzFieldsKeys: whatever the names asked for, the batched read finds
// exactly the stored field and fails on nothing. Keys travel to SQLite
// as JSON text (qFieldsJSON), so a name that broke the JSON would fail
// the whole batch, and one that escaped wrongly could read another key.
func FuzzFieldsKeys(f *testing.F) {
	s := openTest(f, Options{})
	c := own(regA, 1, "d", "f", `"v"`)
	c.NS = "ns"
	save(f, s, &replica.Ready{NS: "ns", Fields: fieldsOf(c)})
	st := s.Storage("ns").(replica.FieldBatcher)
	held := c.Key()
	for _, doc := range []string{"d", `d"`, `d\`, `\"`, "café", "\xff", `\u0064`, "d f", "[", "]", ","} {
		f.Add("items", doc, "f")
	}
	f.Fuzz(func(t *testing.T, coll, doc, field string) {
		k := crdt.FieldKey{NS: "ns", Coll: coll, Doc: doc, Field: field}
		// Fewer than docRangeMin keys of a document: every key goes
		// through the JSON join, alone and on either side of the held one.
		for _, keys := range [][]crdt.FieldKey{{k}, {held, k}, {k, held}} {
			got, err := st.Fields(keys)
			if err != nil {
				t.Fatalf("Fields(%q): %v", keys, err)
			}
			for fk := range got {
				if fk != held {
					t.Fatalf("Fields(%q) read %q, which is not stored", keys, fk)
				}
			}
			if want := slices.Contains(keys, held); (got[held] != nil) != want {
				t.Fatalf("Fields(%q): held field read %v, want %v", keys, got[held] != nil, want)
			}
		}
	})
}
