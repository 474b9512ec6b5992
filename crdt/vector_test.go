package crdt_test

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"
	"pgregory.net/rapid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
)

// rid makes a readable replica id whose byte order is n's order.
func rid(n byte) crdt.ReplicaID { return crdt.ReplicaID{0: n, 15: 1} }

func TestVector(t *testing.T) {
	us, eu, ap := rid(1), rid(2), rid(3)
	v := crdt.Vector{us: 5, eu: 2}
	for _, tc := range []struct {
		d    crdt.Dot
		want bool
	}{
		{crdt.Dot{Replica: us, Seq: 5}, true},
		{crdt.Dot{Replica: us, Seq: 1}, true},
		{crdt.Dot{Replica: us, Seq: 6}, false},
		{crdt.Dot{Replica: ap, Seq: 1}, false},
		{crdt.Dot{Replica: ap, Seq: 0}, true}, // nothing to hold
	} {
		if got := v.Covers(tc.d); got != tc.want {
			t.Errorf("Covers(%v) = %v, want %v", tc.d, got, tc.want)
		}
	}

	for _, tc := range []struct {
		o    crdt.Vector
		want bool
	}{
		{nil, true},
		{crdt.Vector{}, true},
		{crdt.Vector{us: 5}, true},
		{crdt.Vector{us: 5, eu: 2, ap: 0}, true},
		{crdt.Vector{us: 6}, false},
		{crdt.Vector{ap: 1}, false},
		{crdt.Vector{us: 1, eu: 3}, false},
	} {
		if got := v.CoversAll(tc.o); got != tc.want {
			t.Errorf("%v.CoversAll(%v) = %v, want %v", v, tc.o, got, tc.want)
		}
	}
	if crdt.Vector(nil).CoversAll(crdt.Vector{us: 1}) || !crdt.Vector(nil).CoversAll(nil) {
		t.Error("nil vector covers only the empty vector")
	}

	o := crdt.Vector{us: 3, eu: 7, ap: 1}
	if m := v.Missing(o); !mapsEqual(m, crdt.Vector{eu: 3, ap: 1}) {
		t.Errorf("Missing = %v, want eu from 3, ap from 1", m)
	}
	if m := o.Missing(v); !mapsEqual(m, crdt.Vector{us: 4}) {
		t.Errorf("reverse Missing = %v, want us from 4", m)
	}
	if m := v.Missing(v); m != nil {
		t.Errorf("Missing of itself = %v, want nil", m)
	}

	c := v.Clone()
	c.Merge(o)
	if !mapsEqual(c, crdt.Vector{us: 5, eu: 7, ap: 1}) {
		t.Errorf("Merge = %v", c)
	}
	if !mapsEqual(v, crdt.Vector{us: 5, eu: 2}) {
		t.Errorf("Merge into a clone changed the original: %v", v)
	}
	if !c.CoversAll(v) || !c.CoversAll(o) || c.Missing(v) != nil || c.Missing(o) != nil {
		t.Error("a merge must cover both sides")
	}
	if got := c.Sum(); got != 13 {
		t.Errorf("Sum = %d", got)
	}
	if got := c.Regions(); !slices.Equal(got, []crdt.ReplicaID{us, eu, ap}) {
		t.Errorf("Regions = %v", got)
	}
}

func mapsEqual(a, b crdt.Vector) bool {
	if len(a) != len(b) {
		return false
	}
	for k, n := range a {
		if m, ok := b[k]; !ok || m != n {
			return false
		}
	}
	return true
}

func TestVectorProperties(t *testing.T) {
	ids := []crdt.ReplicaID{rid(1), rid(2), rid(3), rid(4)}
	genVec := rapid.Custom(func(t *rapid.T) crdt.Vector {
		v := crdt.Vector{}
		for _, id := range ids {
			if n := rapid.Uint64Range(0, 6).Draw(t, "n"); n > 0 {
				v[id] = n
			}
		}
		return v
	})
	rapid.Check(t, func(t *rapid.T) {
		a, b := genVec.Draw(t, "a"), genVec.Draw(t, "b")
		// Asking for what Missing names, and merging it, catches up.
		m := a.Missing(b)
		for r, from := range m {
			if a.Covers(crdt.Dot{Replica: r, Seq: from}) || !b.Covers(crdt.Dot{Replica: r, Seq: from}) {
				t.Fatalf("Missing says %v from %d, a=%v b=%v", r, from, a, b)
			}
		}
		if (m == nil) != a.CoversAll(b) {
			t.Fatalf("Missing %v but CoversAll %v", m, a.CoversAll(b))
		}
		ab := a.Clone()
		ab.Merge(b)
		ba := b.Clone()
		ba.Merge(a)
		if !mapsEqual(ab, ba) || !ab.CoversAll(a) || !ab.CoversAll(b) {
			t.Fatalf("merge: %v vs %v", ab, ba)
		}
		for _, id := range ids {
			if ab[id] != max(a[id], b[id]) {
				t.Fatalf("merge of %v: %d, want max(%d, %d)", id, ab[id], a[id], b[id])
			}
		}
		if ab.Sum() < a.Sum() || ab.Sum() < b.Sum() {
			t.Fatal("merge lost changes")
		}
	})
}

func TestCtx(t *testing.T) {
	a, b := rid(1), rid(2)
	var c crdt.Ctx
	c = c.Add(crdt.Dot{Replica: b, Seq: 3})
	c = c.Add(crdt.Dot{Replica: a, Seq: 5})
	c = c.Add(crdt.Dot{Replica: b, Seq: 2}) // lower: no change
	want := crdt.Ctx{{Replica: a, Seq: 5}, {Replica: b, Seq: 3}}
	if !slices.Equal(c, want) {
		t.Fatalf("Ctx = %v, want %v", c, want)
	}
	for _, tc := range []struct {
		d    crdt.Dot
		want bool
	}{
		{crdt.Dot{Replica: a, Seq: 1}, true}, // below the mark
		{crdt.Dot{Replica: a, Seq: 5}, true},
		{crdt.Dot{Replica: a, Seq: 6}, false},
		{crdt.Dot{Replica: rid(3), Seq: 1}, false},
	} {
		if got := c.Covers(tc.d); got != tc.want {
			t.Errorf("Covers(%v) = %v, want %v", tc.d, got, tc.want)
		}
	}

	// Against a model: a map of highest marks.
	rapid.Check(t, func(t *rapid.T) {
		var c crdt.Ctx
		model := map[crdt.ReplicaID]uint64{}
		for _, d := range rapid.SliceOf(rapid.Custom(func(t *rapid.T) crdt.Dot {
			var id uuid.UUID
			id[rapid.IntRange(0, 15).Draw(t, "byte")] = rapid.Byte().Draw(t, "val")
			return crdt.Dot{Replica: id, Seq: rapid.Uint64Range(1, 9).Draw(t, "seq")}
		})).Draw(t, "adds") {
			c = c.Add(d)
			model[d.Replica] = max(model[d.Replica], d.Seq)
		}
		if len(c) != len(model) {
			t.Fatalf("Ctx has %d entries, want %d", len(c), len(model))
		}
		for i, d := range c {
			if i > 0 && bytes.Compare(c[i-1].Replica[:], d.Replica[:]) >= 0 {
				t.Fatalf("not sorted by replica: %v", c)
			}
			if model[d.Replica] != d.Seq {
				t.Fatalf("%v holds %d, want %d", d.Replica, d.Seq, model[d.Replica])
			}
			if !c.Covers(d) || c.Covers(crdt.Dot{Replica: d.Replica, Seq: d.Seq + 1}) {
				t.Fatalf("Covers wrong at the mark of %v", d)
			}
		}
	})
}

func TestStamp(t *testing.T) {
	lo, hi := rid(1), rid(2)
	s := func(h uint64, r crdt.ReplicaID) crdt.Stamp { return crdt.Stamp{HLC: hlc.Timestamp(h), Replica: r} }
	ordered := []crdt.Stamp{
		{},
		s(1, crdt.ReplicaID{}),
		s(1, lo),
		s(1, hi),
		s(2, lo),
		s(1<<40, crdt.ReplicaID{0: 0, 15: 0xff}),
		s(1<<40, crdt.ReplicaID{0: 0xff}), // the first byte decides, not the last
	}
	for i, a := range ordered {
		for j, b := range ordered {
			if got := a.Less(b); got != (i < j) {
				t.Errorf("%v.Less(%v) = %v", a, b, got)
			}
			if m := a.Max(b); m != ordered[max(i, j)] {
				t.Errorf("%v.Max(%v) = %v", a, b, m)
			}
		}
	}
	if !(crdt.Stamp{}).IsZero() || s(1, crdt.ReplicaID{}).IsZero() || s(0, lo).IsZero() {
		t.Error("IsZero")
	}
	if !(crdt.Dot{}).IsZero() || (crdt.Dot{Seq: 1}).IsZero() || (crdt.Dot{Replica: lo}).IsZero() {
		t.Error("Dot.IsZero")
	}
	// The order is bytes.Compare on the ids, whatever their bytes.
	rapid.Check(t, func(t *rapid.T) {
		var a, b crdt.ReplicaID
		copy(a[:], rapid.SliceOfN(rapid.Byte(), 16, 16).Draw(t, "a"))
		copy(b[:], rapid.SliceOfN(rapid.Byte(), 16, 16).Draw(t, "b"))
		if rapid.Bool().Draw(t, "shareHalf") {
			copy(b[:8], a[:8])
		}
		if got, want := s(7, a).Less(s(7, b)), bytes.Compare(a[:], b[:]) < 0; got != want {
			t.Fatalf("%v < %v: %v, want %v", a, b, got, want)
		}
	})
}

func TestNames(t *testing.T) {
	type check func(string) error
	cases := []struct {
		what  string
		fn    check
		max   int
		extra string // allowed beyond [A-Za-z0-9_-]
	}{
		{"name", crdt.ValidateName, 64, ""},
		{"doc id", crdt.ValidateDocID, 128, ".:"},
		{"field", crdt.ValidateField, 64, ".:"},
	}
	for _, tc := range cases {
		t.Run(tc.what, func(t *testing.T) {
			ok := []string{"a", "Z9_-", strings.Repeat("x", tc.max), strings.Repeat("y", tc.max-1)}
			bad := []string{"", strings.Repeat("x", tc.max+1), "a b", "a/b", "a*", "a>", "é", "a\x00", "a\n"}
			for _, c := range ".:" {
				if strings.ContainsRune(tc.extra, c) {
					ok = append(ok, "a"+string(c)+"b")
				} else {
					bad = append(bad, "a"+string(c)+"b")
				}
			}
			for _, s := range ok {
				if err := tc.fn(s); err != nil {
					t.Errorf("%q (%d chars): %v", s, len(s), err)
				}
			}
			for _, s := range bad {
				err := tc.fn(s)
				if !errors.Is(err, crdt.ErrBadName) || !errors.Is(err, crdt.ErrInvalid) {
					t.Errorf("%q (%d chars): err = %v, want ErrBadName", s, len(s), err)
				}
			}
			// A long bad name is clipped in the message.
			if err := tc.fn(strings.Repeat("z", 1000)); err == nil || len(err.Error()) > 300 {
				t.Errorf("1000 chars: %v", err)
			}
		})
	}
}
