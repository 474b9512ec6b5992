package replicatest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/replica"
	"github.com/syncd/syncd/resolver"
)

// check compares every replica with every other and with the model, once
// the deployment has settled.
func (s *sim) check() error {
	if err := s.checkStores(); err != nil {
		return err
	}
	if err := s.checkClocks(); err != nil {
		return err
	}
	byDoc := s.model.docs()
	keys := map[crdt.DocKey]bool{}
	for k := range byDoc {
		keys[k] = true
	}
	for _, n := range s.nodes {
		for _, k := range n.st.DocKeys() {
			keys[k] = true
		}
	}
	sorted := make([]crdt.DocKey, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	slices.SortFunc(sorted, func(a, b crdt.DocKey) int { return strings.Compare(a.String(), b.String()) })

	digest := sha256.New()
	for _, k := range sorted {
		wantFields, wantView, err := expectDoc(k, byDoc[k])
		if err != nil {
			return fmt.Errorf("%s: %w", k, err)
		}
		want, err := canonicalDoc(wantFields)
		if err != nil {
			return err
		}
		wantV, err := json.Marshal(wantView)
		if err != nil {
			return err
		}
		first := s.nodes[0]
		firstDoc, err := canonicalDoc(first.st.DocFields(k))
		if err != nil {
			return err
		}
		firstV, err := json.Marshal(resolver.Render(k.Doc, first.st.DocFields(k), nil))
		if err != nil {
			return err
		}
		// Replicas against each other first: a divergence is a worse bug
		// than a wrong but common answer, and says more.
		for _, n := range s.nodes[1:] {
			if !replica.Follows(n.colls, k.Coll) {
				continue // it holds its own writes there, and nothing else
			}
			if !equalDoc(first.st.DocFields(k), n.st.DocFields(k)) {
				d, names := diffFields(first.name, first.st.DocFields(k), n.name, n.st.DocFields(k))
				return fmt.Errorf("replicas diverge on %s%s\n%s", k, d, s.changesOf(byDoc[k], names))
			}
			gotV, err := json.Marshal(resolver.Render(k.Doc, n.st.DocFields(k), nil))
			if err != nil {
				return err
			}
			if !bytes.Equal(gotV, firstV) {
				return fmt.Errorf("replicas render %s differently:\n  %s: %s\n  %s: %s", k, first.name, firstV, n.name, gotV)
			}
		}
		if !bytes.Equal(firstDoc, want) {
			d, names := diffFields("replicas", first.st.DocFields(k), "model", wantFields)
			return fmt.Errorf("%s: state differs from the model%s\n%s", k, d, s.changesOf(byDoc[k], names))
		}
		if !bytes.Equal(firstV, wantV) {
			return fmt.Errorf("%s: view differs from the model:\n  replicas: %s\n  model:    %s\n%s", k, firstV, wantV, s.changesOf(byDoc[k], nil))
		}
		digest.Write(firstDoc)
		digest.Write(firstV)
	}

	wantSchema := s.model.expectSchema()
	for _, n := range s.nodes {
		sc, err := n.r.Schema(coll)
		if err != nil {
			return fmt.Errorf("%s: schema: %w", n.name, err)
		}
		got := map[string]string{}
		for f, k := range sc.Fields {
			got[f] = k.String()
		}
		if fmt.Sprint(got) != fmt.Sprint(wantSchema) {
			return fmt.Errorf("%s: schema %v, model %v", n.name, got, wantSchema)
		}
	}
	r := s.res
	r.Trace, r.Digest = nil, ""
	fmt.Fprintf(digest, "%+v", r)
	s.res.Digest = hex.EncodeToString(digest.Sum(nil))
	return nil
}

// checkClocks checks what the HLC promises, over every durable change: an
// origin's stamps grow with its sequence numbers, across restarts too, and
// a change is stamped after every change it supersedes.
func (s *sim) checkClocks() error {
	byOrigin := map[crdt.ReplicaID][]*crdt.Change{}
	for _, c := range s.model.order {
		byOrigin[c.Origin] = append(byOrigin[c.Origin], c)
		for _, d := range c.Context {
			if p := s.model.byDot[d]; p != nil && p.HLC >= c.HLC {
				return fmt.Errorf("%s/%d stamped %s supersedes %s/%d stamped %s, which is not older",
					s.nameOf(c.Origin), c.Seq, c.HLC, s.nameOf(d.Replica), d.Seq, p.HLC)
			}
		}
	}
	for _, cs := range byOrigin {
		slices.SortFunc(cs, func(a, b *crdt.Change) int { return cmpDot(a.Dot(), b.Dot()) })
		for i := 1; i < len(cs); i++ {
			if cs[i].HLC <= cs[i-1].HLC {
				return fmt.Errorf("%s/%d is stamped %s, not after %s/%d stamped %s",
					s.nameOf(cs[i].Origin), cs[i].Seq, cs[i].HLC, s.nameOf(cs[i-1].Origin), cs[i-1].Seq, cs[i-1].HLC)
			}
		}
	}
	return nil
}

// checkStores checks what every store holds besides documents: exactly the
// changes their origins made durable (no lost write resurfacing, none
// missing), region logs without holes, empty outboxes.
func (s *sim) checkStores() error {
	want := len(s.model.order)
	for _, n := range s.nodes {
		if n.r.HasReady() {
			return fmt.Errorf("%s has an unsaved Ready after settling", n.name)
		}
		if len(n.st.Outbox) > 0 {
			return fmt.Errorf("%s: %d writes still in the outbox", n.name, len(n.st.Outbox))
		}
		for _, c := range s.model.order {
			if !replica.Follows(n.colls, c.Coll) && c.Origin != n.id {
				continue
			}
			if !n.st.Dots.Has(c.Dot()) {
				return fmt.Errorf("%s lacks durable change %s/%d (%s %s)", n.name, s.nameOf(c.Origin), c.Seq, c.Key(), c.Op)
			}
		}
		if n.colls != nil {
			// What it does not follow must not have reached it, but for
			// its own writes.
			for d := range n.st.Dots.All() {
				if c := s.model.byDot[d]; c != nil && !replica.Follows(n.colls, c.Coll) && c.Origin != n.id {
					return fmt.Errorf("%s follows %v and holds %s/%d of %s", n.name, n.colls, s.nameOf(c.Origin), c.Seq, c.Coll)
				}
			}
		}
		if n.st.Dots.Len() != want {
			for d := range n.st.Dots.All() {
				if s.model.byDot[d] == nil {
					return fmt.Errorf("%s holds change %s/%d, which no origin made durable", n.name, s.nameOf(d.Replica), d.Seq)
				}
			}
		}
		vec := n.st.State.Vector
		if !n.isRegion() {
			// A device serves no log and logs nothing it held before
			// (replica.Ready.Log), and pages leave out what it does not
			// follow: its logs have holes. Its vector must still say it
			// has seen every region's whole log (what it holds of them is
			// checked above).
			if full := s.regions[0].st.State.Vector; !vec.CoversAll(full) || !full.CoversAll(vec) {
				return fmt.Errorf("%s: vector %v, regions hold %v", n.name, vec, full)
			}
			continue
		}
		for _, reg := range vec.Regions() {
			l := n.st.Logs[reg]
			if uint64(len(l)) != vec[reg] {
				return fmt.Errorf("%s: log of %s has %d changes, vector says %d", n.name, s.nameOf(reg), len(l), vec[reg])
			}
			for i := range l {
				c := &l[i]
				if c.Region != reg || c.RSeq != uint64(i+1) {
					return fmt.Errorf("%s: log of %s: entry %d is stamped %s:%d", n.name, s.nameOf(reg), i+1, s.nameOf(c.Region), c.RSeq)
				}
				if !s.model.has(c) {
					return fmt.Errorf("%s: log of %s: %s/%d (id %s) is not a change its origin made durable", n.name, s.nameOf(reg), s.nameOf(c.Origin), c.Seq, c.ID)
				}
			}
		}
		if len(n.st.Logs) != len(vec) {
			return fmt.Errorf("%s: logs for %d regions, vector has %d", n.name, len(n.st.Logs), len(vec))
		}
	}
	return nil
}

// diffFields shows the fields on which two documents' states differ.
func diffFields(an string, a map[string]*crdt.Field, bn string, b map[string]*crdt.Field) (string, []string) {
	names := map[string]bool{}
	for n := range a {
		names[n] = true
	}
	for n := range b {
		names[n] = true
	}
	var out strings.Builder
	var differ []string
	for _, n := range slices.Sorted(maps.Keys(names)) {
		ja, _ := canonicalDoc(map[string]*crdt.Field{n: a[n]})
		jb, _ := canonicalDoc(map[string]*crdt.Field{n: b[n]})
		if bytes.Equal(ja, jb) {
			continue
		}
		differ = append(differ, n)
		fmt.Fprintf(&out, "\n  field %q\n    %s: %s\n    %s: %s", n, an, ja, bn, jb)
	}
	return out.String(), differ
}

// equalDoc compares two documents' field states the way canonicalDoc
// would, without encoding them: a nil and an empty slice are equal.
func equalDoc(a, b map[string]*crdt.Field) bool {
	if len(a) != len(b) {
		return false
	}
	for name, fa := range a {
		fb, ok := b[name]
		if !ok || !equalField(fa, fb) {
			return false
		}
	}
	return true
}

func equalField(a, b *crdt.Field) bool {
	if a == nil || b == nil {
		return a == b
	}
	if a.Last != b.Last || a.LastKind != b.LastKind {
		return false
	}
	if !slices.Equal(a.Reg().Dead, b.Reg().Dead) || !slices.EqualFunc(a.Reg().Sibs, b.Reg().Sibs, func(x, y crdt.Sibling) bool {
		return x.Dot == y.Dot && x.HLC == y.HLC && bytes.Equal(x.Value, y.Value)
	}) {
		return false
	}
	var ea, eb []crdt.Element
	if a.Set() != nil {
		ea = a.Set().Elems
	}
	if b.Set() != nil {
		eb = b.Set().Elems
	}
	if !slices.EqualFunc(ea, eb, func(x, y crdt.Element) bool {
		return bytes.Equal(x.Value, y.Value) && slices.Equal(x.Adds, y.Adds) && slices.Equal(x.Dead, y.Dead)
	}) {
		return false
	}
	var pa, pb []crdt.Part
	if a.Ctr() != nil {
		pa = a.Ctr().Parts
	}
	if b.Ctr() != nil {
		pb = b.Ctr().Parts
	}
	return slices.Equal(pa, pb)
}

// canonicalDoc is a document's field states as JSON with every empty or
// null member left out: a nil and an empty slice mean the same state.
func canonicalDoc(fs map[string]*crdt.Field) ([]byte, error) {
	b, err := json.Marshal(fs)
	if err != nil {
		return nil, fmt.Errorf("encode field states: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("decode field states: %w", err)
	}
	v, _ = prune(v)
	if v == nil {
		return []byte("{}"), nil
	}
	return json.Marshal(v)
}

func prune(v any) (any, bool) {
	switch x := v.(type) {
	case nil:
		return nil, false
	case map[string]any:
		for k, e := range x {
			if p, ok := prune(e); ok {
				x[k] = p
			} else {
				delete(x, k)
			}
		}
		return x, len(x) > 0
	case []any:
		for i, e := range x {
			x[i], _ = prune(e)
		}
		return x, len(x) > 0
	}
	return v, true
}

// changesOf lists the durable changes of some fields of a document (all
// of them if names is nil) for a failure message.
func (s *sim) changesOf(byField map[string][]*crdt.Change, names []string) string {
	var b strings.Builder
	b.WriteString("  durable changes:\n")
	if names == nil {
		names = slices.Sorted(maps.Keys(byField))
	}
	for _, n := range names {
		for _, c := range byField[n] {
			fmt.Fprintf(&b, "    %-6s %s/%d %s %s %s %s", n, s.nameOf(c.Origin), c.Seq, c.HLC, c.Kind, c.Op, c.Value)
			for _, d := range c.Context {
				fmt.Fprintf(&b, " ctx:%s/%d", s.nameOf(d.Replica), d.Seq)
			}
			b.WriteByte('\n')
		}
	}
	return b.String()
}
