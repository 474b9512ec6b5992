package resolver

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
)

// SchemaColl is the reserved collection that holds every collection's
// schema: document id = collection name, field = field name, an lww value
// = the kind's name. Keeping schemas as ordinary documents means they
// replicate, persist and converge by the one mechanism everything else
// uses. Collections whose names start with "_" are reserved for syncd.
const SchemaColl = "_schema"

// Schema maps a collection's field names to kinds; unnamed fields are lww.
type Schema struct {
	Fields map[string]crdt.Kind `json:"fields"`
}

// KindOf returns the kind of a field (lww by default).
func (s Schema) KindOf(field string) crdt.Kind {
	if k, ok := s.Fields[field]; ok && k != crdt.KindNone {
		return k
	}
	return crdt.KindLWW
}

// Validate checks field names and kinds.
func (s Schema) Validate() error {
	for f, k := range s.Fields {
		if err := crdt.ValidateField(f); err != nil {
			return fmt.Errorf("schema: %w", err)
		}
		// ParseKind of the name also refuses a Kind out of range, which
		// KindOf would otherwise hand on and For would treat as lww.
		if _, err := crdt.ParseKind(k.String()); err != nil {
			return fmt.Errorf("schema: field %q: %w", f, err)
		}
	}
	return nil
}

// IsReserved reports whether a collection name belongs to syncd itself.
func IsReserved(coll string) bool { return strings.HasPrefix(coll, "_") }

// SchemaFromDoc reads a schema out of the fields of its _schema document.
func SchemaFromDoc(fields map[string]*crdt.Field) Schema {
	s := Schema{Fields: map[string]crdt.Kind{}}
	del := crdt.Stamp{}
	if rec := fields[""]; rec != nil {
		del = rec.Last
	}
	for name, f := range fields {
		if name == "" {
			continue
		}
		v, _ := lww{}.Render(f, del)
		var kn string
		if json.Unmarshal(v, &kn) != nil {
			continue
		}
		if k, err := crdt.ParseKind(kn); err == nil {
			s.Fields[name] = k
		}
	}
	return s
}

// SchemaOps returns the writes that make the stored schema (old) equal to
// s: one lww set per field whose kind changes; a field dropped from the
// schema goes back to lww.
func SchemaOps(coll string, old, s Schema) []Op {
	var ops []Op
	names := make([]string, 0, len(s.Fields)+len(old.Fields))
	for f := range s.Fields {
		names = append(names, f)
	}
	for f := range old.Fields {
		if _, ok := s.Fields[f]; !ok {
			names = append(names, f)
		}
	}
	slices.Sort(names)
	for _, f := range names {
		if old.Fields[f] == s.KindOf(f) {
			continue
		}
		v, _ := json.Marshal(s.KindOf(f).String())
		ops = append(ops, Op{Coll: SchemaColl, Doc: coll, Field: f, Op: crdt.OpSet, Value: v})
	}
	return ops
}

// Op is one field operation as a user (or an API) asks for it, before a
// replica turns it into a change.
type Op struct {
	Coll  string          `json:"coll,omitempty"`
	Doc   string          `json:"doc,omitempty"`
	Field string          `json:"field"`
	Op    crdt.Op         `json:"op"`
	Value json.RawMessage `json:"value,omitempty"`
}

// Version is one value shown under a document's conflicts.
type Version struct {
	Value   json.RawMessage `json:"value"`
	Replica crdt.ReplicaID  `json:"replica"`
	Node    string          `json:"node,omitempty"`
	HLC     hlc.Timestamp   `json:"hlc"`
}

// View is a document as the API shows it.
type View struct {
	ID        string                     `json:"id"`
	Fields    map[string]json.RawMessage `json:"fields"`
	Conflicts map[string][]Version       `json:"conflicts"`
	Deleted   bool                       `json:"deleted"`
	Version   hlc.Timestamp              `json:"version"`
}

// Render builds the view of a document from its field states. Each field is
// shown by the policy of the kind of its newest change, which every replica
// agrees on whatever its own schema says. name maps a replica id to a node
// name for conflicts (nil leaves names out).
func Render(id string, fields map[string]*crdt.Field, name func(crdt.ReplicaID) string) View {
	v := View{ID: id, Fields: map[string]json.RawMessage{}, Conflicts: map[string][]Version{}}
	var del crdt.Stamp
	if rec := fields[""]; rec != nil {
		del = rec.Last
	}
	v.Deleted = crdt.IsDeleted(fields)
	for fname, f := range fields {
		if f.Last.HLC > v.Version {
			v.Version = f.Last.HLC
		}
		if fname == "" || v.Deleted {
			continue
		}
		val, conf := For(f.LastKind).Render(f, del)
		if val == nil {
			continue
		}
		v.Fields[fname] = val
		for _, s := range conf {
			ver := Version{Value: s.Value, Replica: s.Dot.Replica, HLC: s.HLC}
			if name != nil {
				ver.Node = name(s.Dot.Replica)
			}
			v.Conflicts[fname] = append(v.Conflicts[fname], ver)
		}
	}
	return v
}

// HasConflicts reports whether a rendered document needs a user's
// attention: manual siblings, or lww values overwritten concurrently.
func (v View) HasConflicts() bool { return len(v.Conflicts) > 0 }
