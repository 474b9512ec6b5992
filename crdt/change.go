package crdt

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/google/uuid"

	"github.com/syncd/syncd/hlc"
)

// Kind is a field's merge policy, chosen per collection field by the schema.
type Kind uint8

const (
	KindNone    Kind = iota // document-level changes (delete) have no field kind
	KindLWW                 // last write wins by Stamp; concurrent losers kept as history
	KindORSet               // add-wins observed-remove set of JSON values
	KindCounter             // PN-counter of int64
	KindManual              // multi-value register: siblings until resolved
)

var kindNames = [...]string{KindNone: "", KindLWW: "lww", KindORSet: "orset", KindCounter: "counter", KindManual: "manual"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", k)
}

// ParseKind maps a schema name to a Kind.
func ParseKind(s string) (Kind, error) {
	for k, n := range kindNames {
		if n == s && s != "" {
			return Kind(k), nil
		}
	}
	return KindNone, fmt.Errorf("%w: %q (want lww, orset, counter or manual)", ErrUnknownKind, s)
}

func (k Kind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }
func (k *Kind) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*k = KindNone
		return nil
	}
	v, err := ParseKind(string(b))
	*k = v
	return err
}

// Op is what a change does to its field.
type Op uint8

const (
	OpInvalid Op = iota
	OpSet        // lww, manual: write a value, superseding the siblings in the context
	OpAdd        // orset: add a value
	OpRemove     // orset: remove the adds of a value in the context
	OpIncr       // counter: add a signed delta
	OpDelete     // the whole document
	OpResolve    // manual: replace exactly the siblings in the context with one value
)

var opNames = [...]string{OpInvalid: "", OpSet: "set", OpAdd: "add", OpRemove: "remove", OpIncr: "incr", OpDelete: "delete", OpResolve: "resolve"}

func (o Op) String() string {
	if int(o) < len(opNames) {
		return opNames[o]
	}
	return fmt.Sprintf("op(%d)", o)
}

// ParseOp maps a wire name to an Op.
func ParseOp(s string) (Op, error) {
	for o, n := range opNames {
		if n == s && s != "" {
			return Op(o), nil
		}
	}
	return OpInvalid, fmt.Errorf("%w: %q", ErrUnknownOp, s)
}

func (o Op) MarshalText() ([]byte, error) { return []byte(o.String()), nil }
func (o *Op) UnmarshalText(b []byte) error {
	v, err := ParseOp(string(b))
	*o = v
	return err
}

// KindFor is the kind an op implies where the op alone decides it; set is
// shared by lww and manual, so it returns KindNone for set.
func (o Op) validFor(k Kind) bool {
	switch o {
	case OpSet:
		return k == KindLWW || k == KindManual
	case OpResolve:
		return k == KindManual || k == KindLWW
	case OpAdd, OpRemove:
		return k == KindORSet
	case OpIncr:
		return k == KindCounter
	case OpDelete:
		return k == KindNone
	}
	return false
}

// Errors callers tell apart. Every validation error wraps ErrInvalid, so a
// server can map the whole family to 400 with one errors.Is.
var (
	ErrInvalid      = errors.New("crdt: invalid change")
	ErrUnknownKind  = fmt.Errorf("%w: unknown kind", ErrInvalid)
	ErrUnknownOp    = fmt.Errorf("%w: unknown op", ErrInvalid)
	ErrBadName      = fmt.Errorf("%w: bad name", ErrInvalid)
	ErrValueTooBig  = fmt.Errorf("%w: value too large", ErrInvalid)
	ErrTooDeep      = fmt.Errorf("%w: value nested too deeply", ErrInvalid)
	ErrWrongKind    = errors.New("crdt: op does not fit the field's kind")
	ErrCounterRange = errors.New("crdt: counter overflow")
)

// Change is one field operation, the unit of replication.
type Change struct {
	ID uuid.UUID `json:"id"`
	// Dot: the origin replica and its sequence number. Merge identity: a
	// change re-sent through another region is recognised by it.
	Origin ReplicaID     `json:"origin"`
	Seq    uint64        `json:"seq"`
	HLC    hlc.Timestamp `json:"hlc"`
	// Region stamp: the region that first accepted the change and the
	// sequence number it gave it. Vectors count these, so they stay one entry
	// per region however many devices write. Zero on a device's change that
	// no region has accepted yet.
	Region ReplicaID `json:"region"`
	RSeq   uint64    `json:"rseq"`

	NS    string `json:"ns"`
	Coll  string `json:"coll"`
	Doc   string `json:"doc"`
	Field string `json:"field,omitempty"`
	Kind  Kind   `json:"kind,omitempty"`
	Op    Op     `json:"op"`
	// Value is canonical JSON (see Canonical): the register value, the set
	// element, or the counter delta.
	Value json.RawMessage `json:"value,omitempty"`
	// Total is a counter change's origin's running contribution to the
	// field after this op. Carrying it makes counter merge "latest per
	// origin wins", which is idempotent without remembering every dot.
	Total int64 `json:"total,omitempty"`
	// Context lists the dots this change supersedes (register siblings, or
	// the adds of the set element it removes or re-adds).
	Context []Dot `json:"ctx,omitempty"`
}

// Dot returns the change's merge identity.
func (c *Change) Dot() Dot { return Dot{c.Origin, c.Seq} }

// RegionDot returns the change's region stamp as a dot over regions.
func (c *Change) RegionDot() Dot { return Dot{c.Region, c.RSeq} }

// Stamp returns the change's total-order stamp.
func (c *Change) Stamp() Stamp { return Stamp{c.HLC, c.Origin} }

// Key names the field the change writes; Field is "" for document-level
// changes.
func (c *Change) Key() FieldKey { return FieldKey{c.NS, c.Coll, c.Doc, c.Field} }

// DocKey names the document the change writes.
func (c *Change) DocKey() DocKey { return DocKey{c.NS, c.Coll, c.Doc} }

// DocKey names a document.
type DocKey struct{ NS, Coll, Doc string }

// FieldKey names a field of a document; Field "" is the document itself.
type FieldKey struct{ NS, Coll, Doc, Field string }

// Doc returns the document the field belongs to.
func (k FieldKey) DocKey() DocKey { return DocKey{k.NS, k.Coll, k.Doc} }

func (k FieldKey) String() string { return k.NS + "/" + k.Coll + "/" + k.Doc + "#" + k.Field }
func (k DocKey) String() string   { return k.NS + "/" + k.Coll + "/" + k.Doc }

// Validate checks a change's structure: names, kind and op agree, the value
// fits the op. It does not check the collection's schema (package resolver
// does). Every error wraps ErrInvalid, except an op that does not fit the
// change's kind, which wraps ErrWrongKind.
func (c *Change) Validate(lim Limits) error {
	if c.Origin == uuid.Nil || c.Seq == 0 {
		return fmt.Errorf("%w: missing origin or seq", ErrInvalid)
	}
	if c.ID == uuid.Nil {
		return fmt.Errorf("%w: missing id", ErrInvalid)
	}
	if c.HLC.IsZero() {
		return fmt.Errorf("%w: missing hlc", ErrInvalid)
	}
	if (c.Region == uuid.Nil) != (c.RSeq == 0) {
		return fmt.Errorf("%w: region stamp half set", ErrInvalid)
	}
	if err := ValidateName(c.NS); err != nil {
		return fmt.Errorf("namespace: %w", err)
	}
	if err := ValidateName(c.Coll); err != nil {
		return fmt.Errorf("collection: %w", err)
	}
	if err := ValidateDocID(c.Doc); err != nil {
		return err
	}
	if c.Op == OpInvalid || int(c.Op) >= len(opNames) {
		// Without this a missing op would be reported as a wrong kind.
		return fmt.Errorf("%w: missing op", ErrUnknownOp)
	}
	if c.Op == OpDelete {
		if c.Field != "" || c.Kind != KindNone || len(c.Value) != 0 || len(c.Context) != 0 || c.Total != 0 {
			return fmt.Errorf("%w: delete takes no field, kind, value or context", ErrInvalid)
		}
		return nil
	}
	if err := ValidateField(c.Field); err != nil {
		return err
	}
	if c.Kind == KindNone || int(c.Kind) >= len(kindNames) {
		return fmt.Errorf("%w: field change without a kind", ErrUnknownKind)
	}
	if !c.Op.validFor(c.Kind) {
		return fmt.Errorf("%w: op %s on a %s field", ErrWrongKind, c.Op, c.Kind)
	}
	if len(c.Context) > lim.MaxContext {
		return fmt.Errorf("%w: context of %d dots (limit %d)", ErrInvalid, len(c.Context), lim.MaxContext)
	}
	for _, d := range c.Context {
		if d.Replica == uuid.Nil || d.Seq == 0 {
			return fmt.Errorf("%w: zero dot in context", ErrInvalid)
		}
	}
	if len(c.Value) == 0 {
		return fmt.Errorf("%w: op %s needs a value", ErrInvalid, c.Op)
	}
	if err := CheckValue(c.Value, lim); err != nil {
		return err
	}
	if c.Op == OpIncr {
		if _, err := parseDelta(c.Value); err != nil {
			return fmt.Errorf("%w: incr needs an integer delta: %v", ErrInvalid, err)
		}
	} else if c.Total != 0 {
		return fmt.Errorf("%w: total on a non-counter op", ErrInvalid)
	}
	return nil
}

// Delta returns an incr change's delta (0 for anything else or on a bad
// value; Validate refuses those).
func (c *Change) Delta() int64 {
	var d int64
	if c.Op == OpIncr {
		d, _ = parseDelta(c.Value) // validated before it gets here
	}
	return d
}

// parseDelta reads a counter delta as json.Unmarshal into an int64 reads
// it. A plain integer, the only delta a replica writes, is parsed
// directly: the reflective decoder would cost more than the merge itself.
func parseDelta(v []byte) (int64, error) {
	if isInteger(v) {
		if d, err := strconv.ParseInt(string(v), 10, 64); err == nil {
			return d, nil
		}
	}
	var d int64
	err := json.Unmarshal(v, &d)
	return d, err
}

// isInteger reports whether v is exactly -?(0|[1-9][0-9]*).
func isInteger(v []byte) bool {
	if len(v) > 0 && v[0] == '-' {
		v = v[1:]
	}
	if len(v) == 0 || (v[0] == '0' && len(v) > 1) {
		return false
	}
	for _, c := range v {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
