// Package resolver holds the per-field policies: how a local op on a field
// of a given kind becomes a change (its context, its counter total), and how
// a field's merged state is shown. Merge itself is in package crdt and is
// the same for every kind; a policy only decides what a replica writes and
// what a user sees. Pure: no I/O.
package resolver

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"

	"github.com/syncd/syncd/crdt"
)

// Policy is one field kind's behaviour.
type Policy interface {
	Kind() crdt.Kind
	// Prepare checks that c.Op fits the kind and fills what the op needs
	// from the field's current local state f (nil if the field is new):
	// the context of dots it supersedes and, for counters, the total.
	Prepare(f *crdt.Field, c *crdt.Change) error
	// Render returns what a reader sees of f, ignoring writes older than
	// the document's newest delete: the value (nil if none) and the
	// versions shown as conflicts.
	Render(f *crdt.Field, deleted crdt.Stamp) (json.RawMessage, []crdt.Sibling)
}

// For returns the built-in policy of a kind (lww for KindNone).
func For(k crdt.Kind) Policy {
	switch k {
	case crdt.KindORSet:
		return orset{}
	case crdt.KindCounter:
		return counter{}
	case crdt.KindManual:
		return manual{}
	}
	return lww{}
}

var (
	_ Policy = lww{}
	_ Policy = manual{}
	_ Policy = orset{}
	_ Policy = counter{}
)

// MaxHistory bounds how many overwritten concurrent lww values are shown.
// The state keeps at most one live write per writer anyway (each writer's
// next write supersedes its last), so this bounds the answer, not memory.
const MaxHistory = 8

func wrongKind(c *crdt.Change, k crdt.Kind) error {
	return fmt.Errorf("%w: field %q is %s, op %s does not apply", crdt.ErrWrongKind, c.Field, k, c.Op)
}

func visibleSibs(f *crdt.Field, del crdt.Stamp) []crdt.Sibling {
	if f == nil {
		return nil
	}
	var out []crdt.Sibling
	for _, s := range f.Reg().Sibs { // newest first
		if del.Less(s.Stamp()) {
			out = append(out, s)
		}
	}
	return out
}

func registerContext(f *crdt.Field) []crdt.Dot {
	if f == nil {
		return nil
	}
	return f.Reg().Dots()
}

type lww struct{}

func (lww) Kind() crdt.Kind { return crdt.KindLWW }
func (lww) Prepare(f *crdt.Field, c *crdt.Change) error {
	if c.Op != crdt.OpSet && c.Op != crdt.OpResolve {
		return wrongKind(c, crdt.KindLWW)
	}
	c.Context = registerContext(f)
	return nil
}
func (lww) Render(f *crdt.Field, del crdt.Stamp) (json.RawMessage, []crdt.Sibling) {
	s := visibleSibs(f, del)
	if len(s) == 0 {
		return nil, nil
	}
	hist := s[1:]
	if len(hist) > MaxHistory {
		hist = hist[:MaxHistory]
	}
	return s[0].Value, hist
}

type manual struct{}

func (manual) Kind() crdt.Kind { return crdt.KindManual }
func (manual) Prepare(f *crdt.Field, c *crdt.Change) error {
	if c.Op != crdt.OpSet && c.Op != crdt.OpResolve {
		return wrongKind(c, crdt.KindManual)
	}
	// A set or resolve replaces exactly the siblings this replica has seen;
	// one it has not seen survives as a sibling of the new value.
	c.Context = registerContext(f)
	return nil
}
func (manual) Render(f *crdt.Field, del crdt.Stamp) (json.RawMessage, []crdt.Sibling) {
	s := visibleSibs(f, del)
	if len(s) == 0 {
		return nil, nil
	}
	if len(s) == 1 {
		return s[0].Value, nil
	}
	// Until resolved, the newest sibling stands in as the value, and every
	// sibling (that one included) is listed for the user to pick from.
	return s[0].Value, s
}

type orset struct{}

func (orset) Kind() crdt.Kind { return crdt.KindORSet }
func (orset) Prepare(f *crdt.Field, c *crdt.Change) error {
	if c.Op != crdt.OpAdd && c.Op != crdt.OpRemove {
		return wrongKind(c, crdt.KindORSet)
	}
	// Both add and remove supersede the element's adds seen here: a remove
	// takes out only those (so a concurrent add wins), and a re-add keeps
	// one live add per writer.
	c.Context = nil
	if f != nil && f.Set() != nil {
		if e := f.Set().Element(c.Value); e != nil {
			for _, t := range e.Adds {
				c.Context = append(c.Context, t.Dot)
			}
		}
	}
	return nil
}
func (orset) Render(f *crdt.Field, del crdt.Stamp) (json.RawMessage, []crdt.Sibling) {
	out := []byte{'['}
	n := 0
	if f != nil && f.Set() != nil {
		for _, e := range f.Set().Elems { // sorted by canonical value
			if slices.ContainsFunc(e.Adds, func(t crdt.Tag) bool { return del.Less(crdt.Stamp{HLC: t.HLC, Replica: t.Dot.Replica}) }) {
				if n > 0 {
					out = append(out, ',')
				}
				out = append(out, e.Value...)
				n++
			}
		}
	}
	return append(out, ']'), nil
}

type counter struct{}

func (counter) Kind() crdt.Kind { return crdt.KindCounter }
func (counter) Prepare(f *crdt.Field, c *crdt.Change) error {
	if c.Op != crdt.OpIncr {
		return wrongKind(c, crdt.KindCounter)
	}
	d, err := strconv.ParseInt(string(c.Value), 10, 64)
	if err != nil {
		return fmt.Errorf("%w: incr needs an integer delta, got %s", crdt.ErrInvalid, c.Value)
	}
	var mine, sum int64
	if f != nil && f.Ctr() != nil {
		mine, sum = f.Ctr().Part(c.Origin), f.Ctr().Value()
	}
	if crdt.AddOverflows(mine, d) || crdt.AddOverflows(sum, d) {
		return fmt.Errorf("%w: %d + %d leaves int64", crdt.ErrCounterRange, sum, d)
	}
	c.Total = mine + d
	return nil
}
func (counter) Render(f *crdt.Field, _ crdt.Stamp) (json.RawMessage, []crdt.Sibling) {
	var v int64
	if f != nil && f.Ctr() != nil {
		v = f.Ctr().Value()
	}
	return json.RawMessage(strconv.AppendInt(nil, v, 10)), nil
}
