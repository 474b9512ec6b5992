package sqlitestore

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/replica"
	"github.com/syncd/syncd/resolver"
)

// outboxLister is the one capability the conformance suite needs beyond
// replica.Storage: reading back the outbox, which a replica gets at start
// (replica.Config.Outbox) rather than through Storage.
type outboxLister interface {
	Outbox() ([]crdt.Change, error)
}

// confNS is the namespace every conformance Ready is of.
const confNS = "shop"

// RunStorageConformance checks that a replica.Storage reads back exactly
// what its save function was given, as replica.MemStorage does. newStore
// returns an empty store of namespace "shop" and the function that
// persists a Ready into it; the Storage must also implement Outbox() so
// the outbox can be read back.
func RunStorageConformance(t *testing.T, newStore func(t *testing.T) (replica.Storage, func(*replica.Ready))) {
	t.Run("fields", func(t *testing.T) { confFields(t, newStore) })
	t.Run("dots", func(t *testing.T) { confDots(t, newStore) })
	t.Run("log pages", func(t *testing.T) { confLog(t, newStore) })
	t.Run("idempotent resave", func(t *testing.T) { confResave(t, newStore) })
	t.Run("outbox", func(t *testing.T) { confOutbox(t, newStore) })
	t.Run("replicas converge", func(t *testing.T) { confReplicas(t, newStore) })
}

var (
	regA   = uuid.UUID{0xa}
	regB   = uuid.UUID{0xb}
	device = uuid.UUID{0xd}
	ts0    = hlc.Make(1_700_000_000_000, 0)
)

// mkChange builds a valid change; seq doubles as the region stamp when the
// region stamped its own write.
func mkChange(origin uuid.UUID, seq uint64, region uuid.UUID, rseq uint64, coll, doc, field string, op crdt.Op, kind crdt.Kind, value string, ctx ...crdt.Dot) crdt.Change {
	c := crdt.Change{
		ID: uuid.NewSHA1(uuid.NameSpaceOID, fmt.Appendf(nil, "%s/%d", origin, seq)), Origin: origin, Seq: seq,
		HLC: ts0 + hlc.Timestamp(seq), Region: region, RSeq: rseq,
		NS: confNS, Coll: coll, Doc: doc, Field: field, Kind: kind, Op: op, Context: ctx,
	}
	if value != "" {
		c.Value = json.RawMessage(value)
	}
	if op == crdt.OpIncr {
		c.Total = c.Delta()
	}
	return c
}

func own(origin uuid.UUID, seq uint64, doc, field, value string, ctx ...crdt.Dot) crdt.Change {
	return mkChange(origin, seq, origin, seq, "items", doc, field, crdt.OpSet, crdt.KindLWW, value, ctx...)
}

// fieldsOf merges changes into field states as a replica would.
func fieldsOf(cs ...crdt.Change) []replica.FieldUpdate {
	states := map[crdt.FieldKey]*crdt.Field{}
	var keys []crdt.FieldKey
	for i := range cs {
		k := cs[i].Key()
		if states[k] == nil {
			states[k] = &crdt.Field{}
			keys = append(keys, k)
		}
		states[k].Apply(&cs[i])
	}
	out := make([]replica.FieldUpdate, len(keys))
	for i, k := range keys {
		out[i] = replica.FieldUpdate{Key: k, State: states[k]}
	}
	return out
}

func mustEqual(t *testing.T, what string, got, want any) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(want)
		t.Fatalf("%s:\n got %s\nwant %s", what, g, w)
	}
}

func confFields(t *testing.T, newStore func(*testing.T) (replica.Storage, func(*replica.Ready))) {
	st, save := newStore(t)
	a1 := own(regA, 1, "d1", "title", `"a"`)
	b1 := own(regB, 1, "d1", "title", `"b"`) // concurrent: two siblings
	add := mkChange(regA, 2, regA, 2, "items", "d1", "tags", crdt.OpAdd, crdt.KindORSet, `"red"`)
	rm := mkChange(regB, 2, regB, 2, "items", "d1", "tags", crdt.OpRemove, crdt.KindORSet, `"blue"`, crdt.Dot{Replica: regA, Seq: 9})
	inc := mkChange(regA, 3, regA, 3, "items", "d1", "stock", crdt.OpIncr, crdt.KindCounter, `5`)
	del := mkChange(regB, 3, regB, 3, "items", "d1", "", crdt.OpDelete, crdt.KindNone, "")
	other := own(regA, 4, "d2", "title", `{"k":[1,2,{"z":null}]}`)
	ups := fieldsOf(a1, b1, add, rm, inc, del, other)
	save(&replica.Ready{NS: confNS, Fields: ups})

	for _, u := range ups {
		got, err := st.Field(u.Key)
		if err != nil {
			t.Fatal(err)
		}
		mustEqual(t, "field "+u.Key.String(), got, u.State)
	}
	if f, err := st.Field(crdt.FieldKey{NS: confNS, Coll: "items", Doc: "d1", Field: "nope"}); err != nil || f != nil {
		t.Fatalf("missing field: got %v, %v; want nil, nil", f, err)
	}
	doc, err := st.Doc(crdt.DocKey{NS: confNS, Coll: "items", Doc: "d1"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]*crdt.Field{}
	for _, u := range ups {
		if u.Key.Doc == "d1" {
			want[u.Key.Field] = u.State
		}
	}
	mustEqual(t, "doc d1", doc, want)
	if len(want) != 4 {
		t.Fatalf("test bug: d1 has %d fields", len(want))
	}
	if fs, err := st.Doc(crdt.DocKey{NS: confNS, Coll: "items", Doc: "nope"}); err != nil || len(fs) != 0 {
		t.Fatalf("missing doc: got %v, %v", fs, err)
	}
	// A later state replaces the earlier one, and only that field.
	a2 := own(regA, 5, "d1", "title", `"c"`, a1.Dot(), b1.Dot())
	up := fieldsOf(a1, b1, a2)
	save(&replica.Ready{NS: confNS, Fields: up})
	got, err := st.Field(up[0].Key)
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "overwritten title", got, up[0].State)
	if len(got.Reg().Sibs) != 1 {
		t.Fatalf("title has %d siblings after a write that saw both", len(got.Reg().Sibs))
	}
	doc, err = st.Doc(crdt.DocKey{NS: confNS, Coll: "items", Doc: "d1"})
	if err != nil {
		t.Fatal(err)
	}
	want["title"] = up[0].State
	mustEqual(t, "doc d1 after overwrite", doc, want)

	// One Ready naming a field twice: the later state wins.
	first, second := fieldsOf(other)[0], fieldsOf(a1)[0]
	second.Key = first.Key
	save(&replica.Ready{NS: confNS, Fields: []replica.FieldUpdate{first, second}})
	if got, err := st.Field(first.Key); err != nil || !reflect.DeepEqual(got, second.State) {
		t.Fatalf("field saved twice in one Ready: %+v, %v", got, err)
	}
}

func confDots(t *testing.T, newStore func(*testing.T) (replica.Storage, func(*replica.Ready))) {
	st, save := newStore(t)
	mine := own(regA, 1, "d1", "f", `1`)                                                      // dot == region stamp
	pushed := mkChange(device, 7, regA, 2, "items", "d1", "g", crdt.OpSet, crdt.KindLWW, `2`) // stamped by regA
	unstamped := mkChange(device, 8, uuid.Nil, 0, "items", "d1", "h", crdt.OpSet, crdt.KindLWW, `3`)
	save(&replica.Ready{NS: confNS, Log: []crdt.Change{mine, pushed, unstamped}})
	for _, tc := range []struct {
		d    crdt.Dot
		want bool
	}{
		{mine.Dot(), true},
		{pushed.Dot(), true},
		{unstamped.Dot(), true},
		{crdt.Dot{Replica: regA, Seq: 2}, false}, // regA's stamp 2 is the device's change, not a dot of regA
		{crdt.Dot{Replica: regA, Seq: 3}, false},
		{crdt.Dot{Replica: device, Seq: 6}, false},
		{crdt.Dot{Replica: regB, Seq: 1}, false},
	} {
		got, err := st.HasDot(tc.d)
		if err != nil {
			t.Fatal(err)
		}
		if got != tc.want {
			t.Errorf("HasDot(%s/%d) = %v, want %v", tc.d.Replica, tc.d.Seq, got, tc.want)
		}
	}
}

func confLog(t *testing.T, newStore func(*testing.T) (replica.Storage, func(*replica.Ready))) {
	st, save := newStore(t)
	var all []crdt.Change
	for i := uint64(1); i <= 25; i++ {
		var c crdt.Change
		if i%5 == 0 { // a device's change stamped by regA
			c = mkChange(device, 100+i, regA, i, "carts", fmt.Sprint("c", i), "items", crdt.OpAdd, crdt.KindORSet, `"x"`)
		} else {
			c = own(regA, i, fmt.Sprint("d", i), "f", fmt.Sprint(i), crdt.Dot{Replica: regB, Seq: i})
		}
		all = append(all, c)
	}
	// Saved in several Readys, interleaved with another region's log.
	for lo := 0; lo < len(all); lo += 7 {
		hi := min(lo+7, len(all))
		b := own(regB, uint64(lo+1), "b", "f", `true`)
		save(&replica.Ready{NS: confNS, Log: append([]crdt.Change{b}, all[lo:hi]...)})
	}
	for _, tc := range []struct {
		from  uint64
		limit int
		want  []crdt.Change
	}{
		{1, 10, all[0:10]},
		{11, 10, all[10:20]},
		{21, 10, all[20:25]},
		{25, 1, all[24:25]},
		{26, 10, nil},
		{3, 1, all[2:3]},
	} {
		got, err := st.Log(regA, tc.from, tc.limit)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 && len(tc.want) == 0 {
			continue
		}
		mustEqual(t, fmt.Sprintf("Log(regA, %d, %d)", tc.from, tc.limit), got, tc.want)
	}
	got, err := st.Log(regB, 1, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 || got[0].Origin != regB || got[3].RSeq != 22 {
		t.Fatalf("Log(regB): got %d changes, want 4 ending at 22: %+v", len(got), got)
	}
	if got, err := st.Log(device, 1, 100); err != nil || len(got) != 0 {
		t.Fatalf("Log of a replica that stamped nothing: %v, %v", got, err)
	}
}

func confResave(t *testing.T, newStore func(*testing.T) (replica.Storage, func(*replica.Ready))) {
	st, save := newStore(t)
	cs := []crdt.Change{own(regA, 1, "d", "f", `1`), own(regA, 2, "d", "f", `2`, crdt.Dot{Replica: regA, Seq: 1})}
	rd := &replica.Ready{NS: confNS, Log: cs, Fields: fieldsOf(cs...),
		State: &replica.State{Vector: crdt.Vector{regA: 2}, Seq: 2, HLC: ts0 + 2}}
	save(rd)
	save(rd) // a redelivered batch
	// Only the first copy of a stamp is kept, even if it comes back changed.
	again := cs[1]
	again.Value = json.RawMessage(`3`)
	save(&replica.Ready{NS: confNS, Log: []crdt.Change{again}})
	got, err := st.Log(regA, 1, 10)
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "log after re-saves", got, cs)
	for _, c := range cs {
		if ok, err := st.HasDot(c.Dot()); err != nil || !ok {
			t.Fatalf("HasDot(%v) = %v, %v after re-save", c.Dot(), ok, err)
		}
	}
}

func confOutbox(t *testing.T, newStore func(*testing.T) (replica.Storage, func(*replica.Ready))) {
	st, save := newStore(t)
	ob, ok := st.(outboxLister)
	if !ok {
		t.Fatalf("%T has no Outbox() method", st)
	}
	var cs []crdt.Change
	for i := uint64(1); i <= 5; i++ {
		cs = append(cs, mkChange(device, i, uuid.Nil, 0, "items", "d", "f", crdt.OpSet, crdt.KindLWW, fmt.Sprint(i)))
	}
	save(&replica.Ready{NS: confNS, Log: cs[:3], Outbox: cs[:3]})
	save(&replica.Ready{NS: confNS, Log: cs[3:], Outbox: cs[3:], OutboxDone: []crdt.Dot{cs[1].Dot()}})
	save(&replica.Ready{NS: confNS, OutboxDone: []crdt.Dot{cs[0].Dot(), cs[4].Dot(), {Replica: device, Seq: 99}}})
	got, err := ob.Outbox()
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "outbox", got, []crdt.Change{cs[2], cs[3]})
	save(&replica.Ready{NS: confNS, OutboxDone: []crdt.Dot{cs[2].Dot(), cs[3].Dot()}})
	if got, err := ob.Outbox(); err != nil || len(got) != 0 {
		t.Fatalf("outbox after all done: %v, %v", got, err)
	}
}

// confReplicas runs two regions and a device over the store under test:
// what the replicas read back through Storage must make them converge.
func confReplicas(t *testing.T, newStore func(*testing.T) (replica.Storage, func(*replica.Ready))) {
	clock := hlc.NewManualClock(1_700_000_000_000)
	type node struct {
		r    *replica.Replica
		st   replica.Storage
		save func(*replica.Ready)
	}
	mk := func(id uuid.UUID, role replica.Role) *node {
		st, save := newStore(t)
		n := &node{st: st, save: save}
		seq := 0
		n.r = replica.New(replica.Config{ID: id, NS: confNS, Role: role, Clock: hlc.NewClock(clock.Now, 0), Storage: st,
			NewID: func() uuid.UUID { seq++; return uuid.NewSHA1(id, fmt.Append(nil, seq)) }})
		return n
	}
	a, b, d := mk(regA, replica.RoleRegion), mk(regB, replica.RoleRegion), mk(device, replica.RoleDevice)
	nodes := []*node{a, b, d}
	flush := func() {
		for range 10 {
			quiet := true
			for _, n := range nodes {
				for n.r.HasReady() {
					quiet = false
					rd := n.r.Ready()
					n.save(&rd)
					n.r.Advance()
					for _, m := range rd.Messages {
						for _, p := range nodes {
							if p != n && (m.To == p.r.ID() || (m.To == uuid.Nil && p.r.ID() != device)) {
								_ = p.r.Step(m)
							}
						}
					}
					if rd.Fanout != nil && n == a {
						_ = d.r.Step(*rd.Fanout)
					}
				}
			}
			if quiet {
				return
			}
		}
	}
	write := func(n *node, field, op, value string) {
		t.Helper()
		o, err := crdt.ParseOp(op)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := n.r.Write([]resolver.Op{{Coll: "carts", Doc: "c1", Field: field, Op: o, Value: []byte(value)}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.r.PutSchema("carts", resolver.Schema{Fields: map[string]crdt.Kind{"items": crdt.KindORSet, "n": crdt.KindCounter, "title": crdt.KindManual}}); err != nil {
		t.Fatal(err)
	}
	flush()
	for _, n := range nodes {
		n.r.Tick()
	}
	d.r.Connect(regA, nil)
	flush()
	write(a, "items", "add", `"apple"`)
	write(b, "items", "add", `"pear"`)
	write(d, "items", "add", `"plum"`)
	write(a, "n", "incr", `2`)
	write(d, "n", "incr", `3`)
	clock.Advance(1)
	write(a, "title", "set", `"A"`)
	write(b, "title", "set", `"B"`)
	flush()
	for range 3 {
		for _, n := range nodes {
			n.r.Tick()
		}
		flush()
	}
	k := crdt.DocKey{NS: confNS, Coll: "carts", Doc: "c1"}
	var views []string
	for _, n := range nodes {
		fs, err := n.st.Doc(k)
		if err != nil {
			t.Fatal(err)
		}
		v, _ := json.Marshal(resolver.Render("c1", fs, nil))
		views = append(views, string(v))
	}
	if views[0] != views[1] || views[0] != views[2] {
		t.Fatalf("replicas differ:\n a %s\n b %s\n d %s", views[0], views[1], views[2])
	}
	for _, want := range []string{`"apple"`, `"pear"`, `"plum"`, `"n":5`, `"A"`, `"B"`} {
		if !strings.Contains(views[0], want) {
			t.Fatalf("converged view %s lacks %s", views[0], want)
		}
	}
}

// memWithOutbox gives MemStorage the Outbox() the suite reads back.
type memWithOutbox struct{ *replica.MemStorage }

func (m memWithOutbox) Outbox() ([]crdt.Change, error) { return m.MemStorage.Outbox, nil }

func TestMemStorageConformance(t *testing.T) {
	RunStorageConformance(t, func(t *testing.T) (replica.Storage, func(*replica.Ready)) {
		m := replica.NewMemStorage()
		return memWithOutbox{m}, m.Save
	})
}

func TestSQLiteStorageConformance(t *testing.T) {
	RunStorageConformance(t, func(t *testing.T) (replica.Storage, func(*replica.Ready)) {
		s := openTest(t, Options{KeepLog: true})
		return s.Storage(confNS), func(rd *replica.Ready) {
			t.Helper()
			if err := s.Save(context.Background(), []*replica.Ready{rd}); err != nil {
				t.Fatal(err)
			}
		}
	})
}
