package sqlitestore

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/google/uuid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/replica"
)

// TestFollow: the vector is reset exactly when the followed collections
// widen (or were never recorded), and nothing else moves.
func TestFollow(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "device.db")
	s, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	region := uuid.UUID{0x01}
	field := crdt.FieldKey{NS: "shop", Coll: "a", Doc: "d1", Field: "f"}
	c := crdt.Change{ID: uuid.New(), Origin: region, Seq: 1, HLC: hlc.Timestamp(7 << 16), Region: region, RSeq: 1,
		NS: "shop", Coll: "a", Doc: "d1", Field: "f", Kind: crdt.KindLWW, Op: crdt.OpSet, Value: []byte(`"x"`)}
	holds := func(n uint64) {
		t.Helper()
		f := &crdt.Field{}
		f.Apply(&c)
		save(t, s, &replica.Ready{NS: "shop", Log: []crdt.Change{c},
			State:  &replica.State{Vector: crdt.Vector{region: n}, Seq: 3, HLC: hlc.Timestamp(9 << 16)},
			Fields: []replica.FieldUpdate{{Key: field, State: f}}})
	}
	follow := func(colls []string, want bool) {
		t.Helper()
		got, err := s.Follow(ctx, "shop", colls)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("Follow(%v) reset = %v, want %v", colls, got, want)
		}
	}
	vector := func() crdt.Vector {
		t.Helper()
		st, _, err := s.Load(ctx, "shop")
		if err != nil {
			t.Fatal(err)
		}
		if st.Seq != 3 || st.HLC != hlc.Timestamp(9<<16) {
			t.Fatalf("seq %d, hlc %v: a reset must keep them", st.Seq, st.HLC)
		}
		return st.Vector
	}

	follow([]string{"b", "a", "a"}, false) // nothing held yet
	holds(5)
	follow([]string{"a"}, false) // narrower
	if v := vector(); v[region] != 5 {
		t.Fatalf("vector %v after narrowing, want it kept", v)
	}
	follow([]string{"c", "a"}, true) // c is new
	if v := vector(); len(v) != 0 {
		t.Fatalf("vector %v after widening, want empty", v)
	}
	if f, err := s.Storage("shop").Field(field); err != nil || f == nil {
		t.Fatalf("field after a reset: %v, %v; want it kept", f, err)
	}
	if held, err := s.Storage("shop").HasDot(c.Dot()); err != nil || !held {
		t.Fatalf("dot after a reset: %v, %v; want it kept", held, err)
	}
	holds(7)
	follow([]string{"a", "c"}, false) // the same
	follow(nil, true)                 // every collection, after some
	holds(9)
	follow([]string{"a"}, false) // narrower than all
	follow(nil, true)

	// Bad names are refused and change nothing.
	holds(11)
	if _, err := s.Follow(ctx, "shop", []string{"no spaces"}); !errors.Is(err, crdt.ErrBadName) {
		t.Fatalf("bad collection: %v, want ErrBadName", err)
	}
	if _, err := s.Follow(ctx, "", nil); !errors.Is(err, crdt.ErrBadName) {
		t.Fatalf("bad namespace: %v, want ErrBadName", err)
	}
	if v := vector(); v[region] != 11 {
		t.Fatalf("vector %v after refused calls, want it kept", v)
	}

	// A store written before the record was kept (schema 1): what its
	// vector covers is unknown, so the first Follow resets it.
	s.mu.Lock()
	err = s.w.exec("DROP TABLE follows")
	if err == nil {
		err = s.w.exec("PRAGMA user_version = 1")
	}
	s.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err = Open(ctx, path, Options{}); err != nil {
		t.Fatalf("open a schema 1 store: %v", err)
	}
	if v := vector(); v[region] != 11 {
		t.Fatalf("vector %v after the migration, want it kept", v)
	}
	follow(nil, true)
	follow(nil, false)
}
