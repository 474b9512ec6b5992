package resolver_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/resolver"
)

// rid makes replica ids whose byte order is n's order.
func rid(n byte) crdt.ReplicaID { return crdt.ReplicaID{0: n, 15: 1} }

var (
	us, eu, ap = rid(1), rid(2), rid(3)
	names      = map[crdt.ReplicaID]string{us: "us", eu: "eu", ap: "ap"}
)

// doc is a document under test, written to change by change.
type doc struct {
	t *testing.T
	crdt.Doc
}

func newDoc(t *testing.T) *doc { return &doc{t: t} }

// write makes a change the way a replica does: the policy of kind k builds
// its context from the state as this document holds it now.
func (d *doc) write(origin crdt.ReplicaID, seq uint64, wall int64, field string, k crdt.Kind, op crdt.Op, value string) crdt.Change {
	d.t.Helper()
	c := d.change(origin, seq, wall, field, k, op, value)
	if err := resolver.For(k).Prepare(d.Fields[field], &c); err != nil {
		d.t.Fatalf("prepare: %v", err)
	}
	d.apply(c)
	return c
}

func (d *doc) change(origin crdt.ReplicaID, seq uint64, wall int64, field string, k crdt.Kind, op crdt.Op, value string) crdt.Change {
	c := crdt.Change{ID: uuid.New(), Origin: origin, Seq: seq, HLC: hlc.Make(wall, 0),
		NS: "app", Coll: "items", Doc: "d", Field: field, Kind: k, Op: op}
	if value != "" {
		v, err := crdt.Canonical([]byte(value), crdt.DefaultLimits)
		if err != nil {
			d.t.Fatalf("value %s: %v", value, err)
		}
		c.Value = v
	}
	return c
}

func (d *doc) delete(origin crdt.ReplicaID, seq uint64, wall int64) {
	c := d.change(origin, seq, wall, "", crdt.KindNone, crdt.OpDelete, "")
	d.apply(c)
}

func (d *doc) apply(cs ...crdt.Change) {
	d.t.Helper()
	for _, c := range cs {
		if err := c.Validate(crdt.DefaultLimits); err != nil {
			d.t.Fatalf("invalid change: %v", err)
		}
		d.Apply(&c)
	}
}

func (d *doc) view() resolver.View {
	return resolver.Render("d", d.Fields, func(r crdt.ReplicaID) string { return names[r] })
}

// shown is a view's field value and its conflicts' values, as text.
func shown(v resolver.View, field string) (string, []string) {
	var conf []string
	for _, c := range v.Conflicts[field] {
		conf = append(conf, string(c.Value))
	}
	return string(v.Fields[field]), conf
}

func wantShown(t *testing.T, v resolver.View, field, value string, conflicts ...string) {
	t.Helper()
	gv, gc := shown(v, field)
	if gv != value || !slices.Equal(gc, conflicts) {
		t.Fatalf("%s shows %s with conflicts %q; want %s with %q", field, gv, gc, value, conflicts)
	}
}

func TestRenderLWW(t *testing.T) {
	d := newDoc(t)
	// Twelve writers, none of whom has seen another: the newest wins and
	// the next MaxHistory newest are kept as history, newest first.
	var want []string
	for i := 1; i <= 12; i++ {
		d.apply(d.change(rid(byte(i)), 1, int64(100+i%4), "title", crdt.KindLWW, crdt.OpSet, fmt.Sprintf(`"w%d"`, i)))
	}
	// Stamps order by HLC, then replica id: 100+3 for 3, 7, 11; ...
	order := []int{11, 7, 3, 10, 6, 2, 9, 5, 1, 12, 8, 4}
	for _, i := range order[1 : 1+resolver.MaxHistory] {
		want = append(want, fmt.Sprintf(`"w%d"`, i))
	}
	v := d.view()
	wantShown(t, v, "title", `"w11"`, want...)
	if !v.HasConflicts() {
		t.Fatal("history must count as a conflict")
	}
	// The bound, at its edges.
	for _, n := range []int{1, 2, resolver.MaxHistory, resolver.MaxHistory + 1, resolver.MaxHistory + 2} {
		e := newDoc(t)
		for i := 1; i <= n; i++ {
			e.apply(e.change(rid(byte(i)), 1, int64(i), "title", crdt.KindLWW, crdt.OpSet, fmt.Sprint(i)))
		}
		val, conf := shown(e.view(), "title")
		if val != fmt.Sprint(n) || len(conf) != min(n-1, resolver.MaxHistory) || n > 1 && conf[0] != fmt.Sprint(n-1) {
			t.Fatalf("%d writers: %s with history %v", n, val, conf)
		}
	}
	if got := v.Conflicts["title"][0]; got.Replica != rid(7) || got.HLC != hlc.Make(103, 0) {
		t.Fatalf("first history entry: %+v", got)
	}

	// A write that has seen them all replaces them all, even an older one.
	d.write(us, 2, 90, "title", crdt.KindLWW, crdt.OpSet, `"final"`)
	v = d.view()
	wantShown(t, v, "title", `"final"`)
	if v.HasConflicts() {
		t.Fatalf("conflicts after a write that saw all: %v", v.Conflicts)
	}
	if len(d.Fields["title"].Reg().Sibs) != 1 {
		t.Fatalf("state keeps %d siblings", len(d.Fields["title"].Reg().Sibs))
	}
}

func TestRenderManual(t *testing.T) {
	// A and B write concurrently; C has seen only A's and resolves.
	a, b, c := newDoc(t), newDoc(t), newDoc(t)
	wa := a.write(us, 1, 100, "title", crdt.KindManual, crdt.OpSet, `"from us"`)
	wb := b.write(eu, 1, 101, "title", crdt.KindManual, crdt.OpSet, `"from eu"`)
	c.apply(wa)
	rc := c.write(ap, 1, 102, "title", crdt.KindManual, crdt.OpResolve, `"picked"`)
	if len(rc.Context) != 1 || rc.Context[0] != wa.Dot() {
		t.Fatalf("resolve context %v, want exactly the sibling seen", rc.Context)
	}

	// Until resolved, every sibling is listed, the newest standing in.
	a.apply(wb)
	wantShown(t, a.view(), "title", `"from eu"`, `"from eu"`, `"from us"`)
	if v := a.view(); v.Conflicts["title"][1].Node != "us" {
		t.Fatalf("node names: %+v", v.Conflicts["title"])
	}

	// The resolve replaced what it saw; the write it did not see survives,
	// whichever order things arrive in (the resolve first, here).
	late := newDoc(t)
	late.apply(rc, wb, wa)
	a.apply(rc)
	for _, d := range []*doc{a, late} {
		wantShown(t, d.view(), "title", `"picked"`, `"picked"`, `"from eu"`)
	}

	// A resolve that has seen both leaves one value.
	a.write(us, 2, 103, "title", crdt.KindManual, crdt.OpResolve, `"done"`)
	wantShown(t, a.view(), "title", `"done"`)
	if a.view().HasConflicts() {
		t.Fatal("resolved field still in conflict")
	}
	// The same state read as lww shows the newest and history.
	a.apply(a.change(eu, 2, 104, "title", crdt.KindLWW, crdt.OpSet, `"lww"`))
	wantShown(t, a.view(), "title", `"lww"`, `"done"`)
}

func TestRenderORSet(t *testing.T) {
	d := newDoc(t)
	if v, conf := resolver.For(crdt.KindORSet).Render(nil, crdt.Stamp{}); string(v) != "[]" || conf != nil {
		t.Fatalf("empty set renders %s", v)
	}
	d.write(us, 1, 100, "cart", crdt.KindORSet, crdt.OpAdd, `"pear"`)
	d.write(us, 2, 101, "cart", crdt.KindORSet, crdt.OpAdd, `{"sku":2, "n":1}`)
	add := d.write(us, 3, 102, "cart", crdt.KindORSet, crdt.OpAdd, `"apple"`)
	add2 := d.write(us, 4, 103, "cart", crdt.KindORSet, crdt.OpAdd, `"apple"`) // re-add supersedes its own
	wantShown(t, d.view(), "cart", `["apple","pear",{"n":1,"sku":2}]`)
	if e := d.Fields["cart"].Set().Element([]byte(`"apple"`)); len(e.Adds) != 1 {
		t.Fatalf("re-add keeps %d adds", len(e.Adds))
	}

	// eu removes the apple it has seen while ap concurrently adds one:
	// the add it did not see wins.
	eu1 := newDoc(t)
	eu1.apply(add)
	rm := eu1.write(eu, 1, 104, "cart", crdt.KindORSet, crdt.OpRemove, `"apple"`)
	apAdd := d.change(ap, 1, 104, "cart", crdt.KindORSet, crdt.OpAdd, `"apple"`)
	d.apply(rm)
	wantShown(t, d.view(), "cart", `["apple","pear",{"n":1,"sku":2}]`) // us's re-add was not seen either
	rm2 := d.write(eu, 2, 105, "cart", crdt.KindORSet, crdt.OpRemove, `"apple"`)
	wantShown(t, d.view(), "cart", `["pear",{"n":1,"sku":2}]`)
	d.apply(apAdd)
	wantShown(t, d.view(), "cart", `["apple","pear",{"n":1,"sku":2}]`)

	// A remove that arrives before the add it removes keeps it removed.
	early := newDoc(t)
	early.apply(rm2)
	wantShown(t, early.view(), "cart", `[]`)
	early.apply(add2, add)
	wantShown(t, early.view(), "cart", `[]`)
}

func TestRenderCounter(t *testing.T) {
	d := newDoc(t)
	d.write(us, 1, 100, "stock", crdt.KindCounter, crdt.OpIncr, `5`)
	d.write(eu, 1, 100, "stock", crdt.KindCounter, crdt.OpIncr, `-2`)
	c := d.write(us, 2, 101, "stock", crdt.KindCounter, crdt.OpIncr, `10`)
	if c.Total != 15 {
		t.Fatalf("us total %d, want its running sum 15", c.Total)
	}
	wantShown(t, d.view(), "stock", `13`)
	if v, _ := resolver.For(crdt.KindCounter).Render(nil, crdt.Stamp{}); string(v) != "0" {
		t.Fatalf("new counter renders %s", v)
	}

	// A delete hides the document; a later increment revives it with the
	// whole count, since a delete cannot cancel increments it has not seen.
	d.delete(ap, 1, 200)
	v := d.view()
	if !v.Deleted || len(v.Fields) != 0 {
		t.Fatalf("deleted doc shows %v (deleted %v)", v.Fields, v.Deleted)
	}
	d.write(ap, 2, 201, "stock", crdt.KindCounter, crdt.OpIncr, `1`)
	v = d.view()
	if v.Deleted {
		t.Fatal("an increment after the delete must revive the document")
	}
	wantShown(t, v, "stock", `14`)
}

func TestRenderDeleted(t *testing.T) {
	d := newDoc(t)
	d.write(us, 1, 100, "title", crdt.KindLWW, crdt.OpSet, `"old"`)
	d.write(us, 2, 101, "notes", crdt.KindManual, crdt.OpSet, `"old note"`)
	d.write(us, 3, 102, "cart", crdt.KindORSet, crdt.OpAdd, `"old item"`)
	// A delete older than the writes changes nothing.
	d.delete(eu, 1, 99)
	v := d.view()
	if v.Deleted || len(v.Fields) != 3 {
		t.Fatalf("older delete: deleted %v, fields %v", v.Deleted, v.Fields)
	}

	d.delete(eu, 2, 200)
	v = d.view()
	if !v.Deleted || len(v.Fields) != 0 || len(v.Conflicts) != 0 || v.Version != hlc.Make(200, 0) {
		t.Fatalf("deleted: %+v", v)
	}

	// A later write revives the document with only what was written
	// after the delete.
	d.write(ap, 1, 300, "cart", crdt.KindORSet, crdt.OpAdd, `"new item"`)
	v = d.view()
	if v.Deleted || v.Version != hlc.Make(300, 0) {
		t.Fatalf("revived: %+v", v)
	}
	wantShown(t, v, "cart", `["new item"]`)
	for _, f := range []string{"title", "notes"} {
		if _, ok := v.Fields[f]; ok {
			t.Fatalf("%s written before the delete is shown: %s", f, v.Fields[f])
		}
	}
	// Writes concurrent with the delete but older than it stay hidden;
	// newer ones show, without the old sibling as a conflict.
	d.apply(d.change(ap, 2, 150, "notes", crdt.KindManual, crdt.OpSet, `"concurrent"`))
	d.apply(d.change(ap, 3, 301, "notes", crdt.KindManual, crdt.OpSet, `"new note"`))
	wantShown(t, d.view(), "notes", `"new note"`)
}

func TestPrepare(t *testing.T) {
	type opCase struct {
		op    crdt.Op
		value string
	}
	all := []opCase{{crdt.OpSet, `1`}, {crdt.OpResolve, `1`}, {crdt.OpAdd, `1`}, {crdt.OpRemove, `1`}, {crdt.OpIncr, `1`}, {crdt.OpDelete, ``}, {crdt.OpInvalid, `1`}}
	fits := map[crdt.Kind][]crdt.Op{
		crdt.KindLWW:     {crdt.OpSet, crdt.OpResolve},
		crdt.KindManual:  {crdt.OpSet, crdt.OpResolve},
		crdt.KindORSet:   {crdt.OpAdd, crdt.OpRemove},
		crdt.KindCounter: {crdt.OpIncr},
	}
	for k, ok := range fits {
		p := resolver.For(k)
		if p.Kind() != k {
			t.Errorf("For(%s).Kind() = %s", k, p.Kind())
		}
		for _, oc := range all {
			c := crdt.Change{Origin: us, Seq: 1, Field: "f", Kind: k, Op: oc.op, Value: json.RawMessage(oc.value)}
			err := p.Prepare(nil, &c)
			if slices.Contains(ok, oc.op) {
				if err != nil {
					t.Errorf("%s %s: %v", k, oc.op, err)
				}
				continue
			}
			if !errors.Is(err, crdt.ErrWrongKind) || !strings.Contains(err.Error(), `"f"`) {
				t.Errorf("%s %s: err = %v, want ErrWrongKind naming the field", k, oc.op, err)
			}
		}
	}
	if resolver.For(crdt.KindNone).Kind() != crdt.KindLWW {
		t.Error("KindNone must fall back to lww")
	}

	// Contexts: the live siblings of a register; the adds of one element.
	d := newDoc(t)
	a := d.write(us, 1, 100, "r", crdt.KindLWW, crdt.OpSet, `1`)
	b := d.change(eu, 1, 100, "r", crdt.KindLWW, crdt.OpSet, `2`)
	d.apply(b)
	for _, k := range []crdt.Kind{crdt.KindLWW, crdt.KindManual} {
		c := crdt.Change{Origin: us, Seq: 2, Field: "r", Kind: k, Op: crdt.OpSet, Value: json.RawMessage(`3`)}
		if err := resolver.For(k).Prepare(d.Fields["r"], &c); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(c.Context, []crdt.Dot{a.Dot(), b.Dot()}) && !slices.Equal(c.Context, []crdt.Dot{b.Dot(), a.Dot()}) {
			t.Errorf("%s context %v, want both siblings", k, c.Context)
		}
	}
	x := d.write(us, 2, 101, "s", crdt.KindORSet, crdt.OpAdd, `"x"`)
	d.write(us, 3, 102, "s", crdt.KindORSet, crdt.OpAdd, `"y"`)
	c := crdt.Change{Origin: eu, Seq: 2, Field: "s", Kind: crdt.KindORSet, Op: crdt.OpRemove, Value: json.RawMessage(`"x"`),
		Context: []crdt.Dot{{Replica: ap, Seq: 9}}} // stale input is replaced
	if err := resolver.For(crdt.KindORSet).Prepare(d.Fields["s"], &c); err != nil || !slices.Equal(c.Context, []crdt.Dot{x.Dot()}) {
		t.Errorf("remove context %v (%v), want the adds of x only", c.Context, err)
	}
	c.Value = json.RawMessage(`"z"`)
	if err := resolver.For(crdt.KindORSet).Prepare(d.Fields["s"], &c); err != nil || c.Context != nil {
		t.Errorf("context of an unseen element: %v", c.Context)
	}
}

func TestPrepareCounter(t *testing.T) {
	p := resolver.For(crdt.KindCounter)
	d := newDoc(t)
	d.write(eu, 1, 100, "n", crdt.KindCounter, crdt.OpIncr, fmt.Sprint(int64(math.MaxInt64-10)))
	d.write(us, 1, 100, "n", crdt.KindCounter, crdt.OpIncr, `-5`)
	for _, tc := range []struct {
		origin crdt.ReplicaID
		delta  string
		want   error
		total  int64
	}{
		{us, `15`, nil, 10},                                   // count reaches MaxInt64
		{us, `16`, crdt.ErrCounterRange, 0},                   // count would pass it
		{ap, `16`, crdt.ErrCounterRange, 0},                   // so would anyone's
		{us, `-9223372036854775804`, crdt.ErrCounterRange, 0}, // own total would pass MinInt64
		{us, `1.5`, crdt.ErrInvalid, 0},
		{us, `"1"`, crdt.ErrInvalid, 0},
		{us, `99999999999999999999`, crdt.ErrInvalid, 0},
	} {
		c := crdt.Change{Origin: tc.origin, Seq: 9, Field: "n", Kind: crdt.KindCounter, Op: crdt.OpIncr, Value: json.RawMessage(tc.delta)}
		err := p.Prepare(d.Fields["n"], &c)
		if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("incr %s by %s: err = %v, want %v", tc.delta, names[tc.origin], err, tc.want)
		}
		if err == nil && c.Total != tc.total {
			t.Errorf("incr %s by %s: total %d, want %d", tc.delta, names[tc.origin], c.Total, tc.total)
		}
	}
}

func TestRenderMixedKinds(t *testing.T) {
	// Replicas with different schemas write the same field; every
	// replica shows it by the kind of its newest change, whatever order
	// the changes arrive in.
	d := newDoc(t)
	cs := []crdt.Change{
		d.change(us, 1, 100, "f", crdt.KindLWW, crdt.OpSet, `"text"`),
		d.change(eu, 1, 101, "f", crdt.KindORSet, crdt.OpAdd, `"item"`),
		d.change(ap, 1, 102, "f", crdt.KindCounter, crdt.OpIncr, `7`),
	}
	cs[2].Total = 7
	var views []string
	for _, order := range [][]int{{0, 1, 2}, {2, 1, 0}, {1, 2, 0}} {
		e := newDoc(t)
		for _, i := range order {
			e.apply(cs[i])
		}
		b, _ := json.Marshal(e.view())
		views = append(views, string(b))
		wantShown(t, e.view(), "f", `7`)
	}
	if views[0] != views[1] || views[1] != views[2] {
		t.Fatalf("views differ by order:\n%s", strings.Join(views, "\n"))
	}
	// Nothing is lost: a newer set shows the register again.
	d.apply(cs...)
	d.apply(d.change(us, 2, 103, "f", crdt.KindManual, crdt.OpSet, `"again"`))
	wantShown(t, d.view(), "f", `"again"`, `"again"`, `"text"`)
}
