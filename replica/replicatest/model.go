package replicatest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"

	"github.com/google/uuid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/resolver"
)

// model is the reference: every change made durable by its origin, and the
// state the semantics say they add up to, computed the naive way — from
// the whole set of changes at once, with none of the core's shortcuts (no
// per-origin compaction of contexts, no running counter totals, no
// incremental merge).
type model struct {
	byDot map[crdt.Dot]*crdt.Change
	order []*crdt.Change
}

func newModel() *model { return &model{byDot: map[crdt.Dot]*crdt.Change{}} }

// add records a change its origin has just made durable. A dot must never
// name two different changes: a restarted replica must not reuse the
// sequence number of a change it had saved.
func (m *model) add(c *crdt.Change) error {
	if old, ok := m.byDot[c.Dot()]; ok {
		if old.ID != c.ID {
			return fmt.Errorf("dot %s/%d names two durable changes, %s and %s", c.Origin, c.Seq, old.ID, c.ID)
		}
		return nil
	}
	cp := *c
	cp.Region, cp.RSeq = uuid.Nil, 0 // the origin's stamp, if any, is not part of what it wrote
	m.byDot[c.Dot()] = &cp
	m.order = append(m.order, &cp)
	return nil
}

// has reports whether c is, apart from its region stamp, a change some
// origin made durable.
func (m *model) has(c *crdt.Change) bool {
	old, ok := m.byDot[c.Dot()]
	return ok && sameChange(old, c)
}

// hasID is has for the hot path of every send: the id and stamp say which
// change it is; checkStores compares the whole content once at the end.
func (m *model) hasID(c *crdt.Change) bool {
	old, ok := m.byDot[c.Dot()]
	return ok && old.ID == c.ID && old.HLC == c.HLC
}

func sameChange(a, b *crdt.Change) bool {
	return a.ID == b.ID && a.Origin == b.Origin && a.Seq == b.Seq && a.HLC == b.HLC &&
		a.NS == b.NS && a.Coll == b.Coll && a.Doc == b.Doc && a.Field == b.Field &&
		a.Kind == b.Kind && a.Op == b.Op && bytes.Equal(a.Value, b.Value) && a.Total == b.Total &&
		slices.Equal(a.Context, b.Context)
}

// docs groups the changes by document, then by field ("" for deletes).
func (m *model) docs() map[crdt.DocKey]map[string][]*crdt.Change {
	out := map[crdt.DocKey]map[string][]*crdt.Change{}
	for _, c := range m.order {
		d := out[c.DocKey()]
		if d == nil {
			d = map[string][]*crdt.Change{}
			out[c.DocKey()] = d
		}
		d[c.Field] = append(d[c.Field], c)
	}
	return out
}

func stampOf(c *crdt.Change) crdt.Stamp { return crdt.Stamp{HLC: c.HLC, Replica: c.Origin} }

func newest(cs []*crdt.Change) *crdt.Change {
	var n *crdt.Change
	for _, c := range cs {
		if n == nil || stampOf(n).Less(stampOf(c)) {
			n = c
		}
	}
	return n
}

func isRegisterOp(o crdt.Op) bool { return o == crdt.OpSet || o == crdt.OpResolve }

// liveWrites returns the register writes (set, resolve) of one field that
// nothing superseded, newest first, by the naive definition: a write is
// superseded iff some write's context lists its dot.
//
// The issue also proposes "... or a later write by the same origin on the
// same field exists"; the core relies on the two being the same (it keeps
// only the highest superseded seq per origin, crdt/doc.go says why). Both
// are computed here and a difference is an error: it would mean the
// compaction loses or resurrects a write.
func liveWrites(cs []*crdt.Change) ([]*crdt.Change, error) {
	seen := map[crdt.Dot]bool{}
	lastSeq := map[crdt.ReplicaID]uint64{}
	for _, c := range cs {
		if !isRegisterOp(c.Op) {
			continue
		}
		for _, d := range c.Context {
			seen[d] = true
		}
		lastSeq[c.Origin] = max(lastSeq[c.Origin], c.Seq)
	}
	var live []*crdt.Change
	for _, c := range cs {
		if !isRegisterOp(c.Op) {
			continue
		}
		byCtx := seen[c.Dot()]
		byOrigin := byCtx || lastSeq[c.Origin] > c.Seq
		if byCtx != byOrigin {
			return nil, fmt.Errorf("model: write %s/%d on %s is superseded by a later write of its origin but listed in no context", c.Origin, c.Seq, c.Key())
		}
		if !byCtx {
			live = append(live, c)
		}
	}
	slices.SortFunc(live, func(a, b *crdt.Change) int {
		if stampOf(b).Less(stampOf(a)) {
			return -1
		}
		return 1
	})
	return live, nil
}

// liveAdds returns, per element value (canonical bytes), the adds that no
// remove or re-add of that value observed.
func liveAdds(cs []*crdt.Change) (values []string, live map[string][]*crdt.Change, ctx map[string][]crdt.Dot) {
	observed := map[string]map[crdt.Dot]bool{}
	ctx = map[string][]crdt.Dot{}
	for _, c := range cs {
		if c.Op != crdt.OpAdd && c.Op != crdt.OpRemove {
			continue
		}
		v := string(c.Value)
		if observed[v] == nil {
			observed[v] = map[crdt.Dot]bool{}
			values = append(values, v)
		}
		for _, d := range c.Context {
			observed[v][d] = true
			ctx[v] = append(ctx[v], d)
		}
	}
	slices.Sort(values)
	live = map[string][]*crdt.Change{}
	for _, c := range cs {
		if c.Op == crdt.OpAdd && !observed[string(c.Value)][c.Dot()] {
			live[string(c.Value)] = append(live[string(c.Value)], c)
		}
	}
	return values, live, ctx
}

// compact is the per-origin maximum of a set of dots: how the core stores
// a context. Only the representation is the core's; which dots go in is
// the model's.
func compact(ds []crdt.Dot) crdt.Ctx {
	hi := map[crdt.ReplicaID]uint64{}
	for _, d := range ds {
		hi[d.Replica] = max(hi[d.Replica], d.Seq)
	}
	var c crdt.Ctx
	for r, s := range hi {
		c = append(c, crdt.Dot{Replica: r, Seq: s})
	}
	slices.SortFunc(c, func(a, b crdt.Dot) int { return bytes.Compare(a.Replica[:], b.Replica[:]) })
	return c
}

func cmpDot(a, b crdt.Dot) int {
	if c := bytes.Compare(a.Replica[:], b.Replica[:]); c != 0 {
		return c
	}
	switch {
	case a.Seq < b.Seq:
		return -1
	case a.Seq > b.Seq:
		return 1
	}
	return 0
}

// field builds the state the core should hold for a field that received
// exactly cs.
func expectField(cs []*crdt.Change) (*crdt.Field, error) {
	f := &crdt.FieldState{}
	n := newest(cs)
	f.Last, f.LastKind = stampOf(n), n.Kind

	live, err := liveWrites(cs)
	if err != nil {
		return nil, err
	}
	var regCtx []crdt.Dot
	for _, c := range cs {
		if isRegisterOp(c.Op) {
			regCtx = append(regCtx, c.Context...)
		}
	}
	for _, c := range live {
		f.Reg.Sibs = append(f.Reg.Sibs, crdt.Sibling{Dot: c.Dot(), HLC: c.HLC, Value: c.Value})
	}
	f.Reg.Dead = compact(regCtx)

	values, adds, setCtx := liveAdds(cs)
	if len(values) > 0 {
		f.Set = &crdt.ORSet{}
		for _, v := range values {
			e := crdt.Element{Value: json.RawMessage(v), Dead: compact(setCtx[v])}
			for _, c := range adds[v] {
				e.Adds = append(e.Adds, crdt.Tag{Dot: c.Dot(), HLC: c.HLC})
			}
			slices.SortFunc(e.Adds, func(a, b crdt.Tag) int { return cmpDot(a.Dot, b.Dot) })
			f.Set.Elems = append(f.Set.Elems, e)
		}
	}

	parts := map[crdt.ReplicaID]*crdt.Part{}
	for _, c := range cs {
		if c.Op != crdt.OpIncr {
			continue
		}
		d, err := strconv.ParseInt(string(c.Value), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("model: incr %s/%d: %w", c.Origin, c.Seq, err)
		}
		p := parts[c.Origin]
		if p == nil {
			p = &crdt.Part{Replica: c.Origin}
			parts[c.Origin] = p
		}
		p.Total += d
		if c.Seq > p.Seq {
			p.Seq, p.HLC = c.Seq, c.HLC
		}
	}
	if len(parts) > 0 {
		f.Ctr = &crdt.Counter{}
		for _, p := range parts {
			f.Ctr.Parts = append(f.Ctr.Parts, *p)
		}
		slices.SortFunc(f.Ctr.Parts, func(a, b crdt.Part) int { return bytes.Compare(a.Replica[:], b.Replica[:]) })
	}
	return f.Field(), nil
}

// expectDoc returns the field states and the view a document should have.
// The view is rendered here from the semantics, independently of package
// resolver: a delete hides everything while it is newer than every field
// write; a write after it revives the document, showing only values
// written after the delete (counters keep their whole count).
func expectDoc(key crdt.DocKey, byField map[string][]*crdt.Change) (map[string]*crdt.Field, resolver.View, error) {
	fs := map[string]*crdt.Field{}
	v := resolver.View{ID: key.Doc, Fields: map[string]json.RawMessage{}, Conflicts: map[string][]resolver.Version{}}
	var del crdt.Stamp
	if ds := byField[""]; len(ds) > 0 {
		del = stampOf(newest(ds))
	}
	deleted := len(byField[""]) > 0
	for name, cs := range byField {
		f, err := expectField(cs)
		if err != nil {
			return nil, v, err
		}
		fs[name] = f
		for _, c := range cs {
			if c.HLC > v.Version {
				v.Version = c.HLC
			}
		}
		if name != "" && !stampOf(newest(cs)).Less(del) {
			deleted = false
		}
	}
	v.Deleted = deleted
	if deleted {
		return fs, v, nil
	}
	after := func(c *crdt.Change) bool { return del.Less(stampOf(c)) }
	for name, cs := range byField {
		if name == "" {
			continue
		}
		switch kind := newest(cs).Kind; kind {
		case crdt.KindCounter:
			var sum int64
			for _, c := range cs {
				if c.Op == crdt.OpIncr {
					d, _ := strconv.ParseInt(string(c.Value), 10, 64)
					sum += d
				}
			}
			v.Fields[name] = json.RawMessage(strconv.FormatInt(sum, 10))
		case crdt.KindORSet:
			values, adds, _ := liveAdds(cs)
			var shown [][]byte
			for _, val := range values {
				if slices.ContainsFunc(adds[val], after) {
					shown = append(shown, []byte(val))
				}
			}
			v.Fields[name] = json.RawMessage("[" + string(bytes.Join(shown, []byte(","))) + "]")
		default:
			live, _ := liveWrites(cs) // its error was returned above
			live = slices.DeleteFunc(live, func(c *crdt.Change) bool { return !after(c) })
			if len(live) == 0 {
				continue
			}
			v.Fields[name] = live[0].Value
			var conf []*crdt.Change
			if kind == crdt.KindManual {
				if len(live) > 1 {
					conf = live
				}
			} else {
				conf = live[1:min(len(live), 1+resolver.MaxHistory)]
			}
			for _, c := range conf {
				v.Conflicts[name] = append(v.Conflicts[name], resolver.Version{Value: c.Value, Replica: c.Origin, HLC: c.HLC})
			}
		}
	}
	return fs, v, nil
}

// expectSchema is the schema the model's _schema document holds: per
// field, the newest live write.
func (m *model) expectSchema() map[string]string {
	out := map[string]string{}
	for name, cs := range m.docs()[crdt.DocKey{NS: ns, Coll: resolver.SchemaColl, Doc: coll}] {
		if live, err := liveWrites(cs); err == nil && len(live) > 0 && name != "" {
			var k string
			if json.Unmarshal(live[0].Value, &k) == nil {
				out[name] = k
			}
		}
	}
	return out
}
