package crdt_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/google/uuid"
	"pgregory.net/rapid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
)

// wireField is one key of a change as written on the wire, in order.
type wireField struct{ key, raw string }

// baseWire is a valid lww set; each bad-input case edits one thing.
var baseWire = []wireField{
	{"id", `"6f1c1a52-8f0e-4a57-9a0e-3c5a4f6b7d01"`},
	{"origin", `"0b7e3a6c-1d2f-4e5a-8b9c-0d1e2f3a4b5c"`},
	{"seq", `7`},
	{"hlc", `"018bcfe568000003"`},
	{"region", `"9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"`},
	{"rseq", `42`},
	{"ns", `"app"`},
	{"coll", `"items"`},
	{"doc", `"doc-1"`},
	{"field", `"title"`},
	{"kind", `"lww"`},
	{"op", `"set"`},
	{"value", `"hello"`},
	{"ctx", `[{"replica":"0b7e3a6c-1d2f-4e5a-8b9c-0d1e2f3a4b5c","seq":3}]`},
}

// wire builds the change with some keys replaced; a raw of "-" drops the
// key, and a key not in baseWire is added.
func wire(edits ...wireField) string {
	fields := append([]wireField(nil), baseWire...)
	for _, e := range edits {
		found := false
		for i, f := range fields {
			if f.key == e.key {
				fields[i].raw, found = e.raw, true
			}
		}
		if !found {
			fields = append(fields, e)
		}
	}
	var b strings.Builder
	b.WriteByte('{')
	n := 0
	for _, f := range fields {
		if f.raw == "-" {
			continue
		}
		if n > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%q:%s", f.key, f.raw)
		n++
	}
	b.WriteByte('}')
	return b.String()
}

func nested(depth int) string { return strings.Repeat("[", depth) + strings.Repeat("]", depth) }

func TestDecodeChangeRejects(t *testing.T) {
	lim := crdt.Limits{MaxValueBytes: 64, MaxDepth: 4, MaxContext: 3}
	f := func(k, raw string) wireField { return wireField{k, raw} }
	dot := `{"replica":"0b7e3a6c-1d2f-4e5a-8b9c-0d1e2f3a4b5c","seq":1}`
	cases := []struct {
		name string
		in   string
		want error
	}{
		{"empty input", ``, crdt.ErrInvalid},
		{"not an object", `[1]`, crdt.ErrInvalid},
		{"null", `null`, crdt.ErrInvalid},
		{"unknown kind", wire(f("kind", `"blob"`)), crdt.ErrUnknownKind},
		{"kind not a string", wire(f("kind", `1`)), crdt.ErrInvalid},
		{"unknown op", wire(f("op", `"zap"`)), crdt.ErrUnknownOp},
		{"empty op", wire(f("op", `""`)), crdt.ErrUnknownOp},
		{"missing op", wire(f("op", "-")), crdt.ErrUnknownOp},
		{"missing id", wire(f("id", "-")), crdt.ErrInvalid},
		{"bad id", wire(f("id", `"not-a-uuid"`)), crdt.ErrInvalid},
		{"missing origin", wire(f("origin", "-")), crdt.ErrInvalid},
		{"missing seq", wire(f("seq", "-")), crdt.ErrInvalid},
		{"negative seq", wire(f("seq", `-1`)), crdt.ErrInvalid},
		{"seq as string", wire(f("seq", `"7"`)), crdt.ErrInvalid},
		{"missing hlc", wire(f("hlc", "-")), crdt.ErrInvalid},
		{"malformed hlc", wire(f("hlc", `"018bcfe56800000g"`)), hlc.ErrBadTimestamp},
		{"hlc as number", wire(f("hlc", `123`)), crdt.ErrInvalid},
		{"missing ns", wire(f("ns", "-")), crdt.ErrBadName},
		{"ns with a dot", wire(f("ns", `"a.b"`)), crdt.ErrBadName},
		{"ns of 65", wire(f("ns", `"`+strings.Repeat("n", 65)+`"`)), crdt.ErrBadName},
		{"ns not ascii", wire(f("ns", `"café"`)), crdt.ErrBadName},
		{"coll with a space", wire(f("coll", `"my items"`)), crdt.ErrBadName},
		{"coll with a subject wildcard", wire(f("coll", `"*"`)), crdt.ErrBadName},
		{"missing doc", wire(f("doc", "-")), crdt.ErrBadName},
		{"doc with a slash", wire(f("doc", `"a/b"`)), crdt.ErrBadName},
		{"doc of 129", wire(f("doc", `"`+strings.Repeat("d", 129)+`"`)), crdt.ErrBadName},
		{"missing field", wire(f("field", "-")), crdt.ErrBadName},
		{"field of 65", wire(f("field", `"`+strings.Repeat("f", 65)+`"`)), crdt.ErrBadName},
		{"field with a space", wire(f("field", `"a b"`)), crdt.ErrBadName},
		{"missing kind", wire(f("kind", "-")), crdt.ErrUnknownKind},
		{"missing value", wire(f("value", "-")), crdt.ErrInvalid},
		{"value over the size limit", wire(f("value", `"`+strings.Repeat("x", 63)+`"`)), crdt.ErrValueTooBig},
		{"value nested over the limit", wire(f("value", nested(5))), crdt.ErrTooDeep},
		{"change nested far over the limit", wire(f("value", nested(100))), crdt.ErrTooDeep},
		{"value not JSON", wire(f("value", `tru`)), crdt.ErrInvalid},
		{"value with spaces", wire(f("value", `[1, 2]`)), crdt.ErrInvalid},
		{"value with unsorted keys", wire(f("value", `{"b":1,"a":2}`)), crdt.ErrInvalid},
		{"value with a needless escape", wire(f("value", `"\u0041"`)), crdt.ErrInvalid},
		{"value with an unescaped <", wire(f("value", `"<"`)), crdt.ErrInvalid},
		{"unknown JSON field", wire(f("extra", `1`)), crdt.ErrInvalid},
		{"trailing object", wire() + `{}`, crdt.ErrInvalid},
		{"trailing garbage", wire() + ` x`, crdt.ErrInvalid},
		{"truncated", wire()[:40], crdt.ErrInvalid},
		{"region without rseq", wire(f("rseq", "-")), crdt.ErrInvalid},
		{"rseq without region", wire(f("region", "-")), crdt.ErrInvalid},
		{"set on an orset", wire(f("kind", `"orset"`)), crdt.ErrWrongKind},
		{"add on an lww", wire(f("op", `"add"`)), crdt.ErrWrongKind},
		{"incr on a manual", wire(f("kind", `"manual"`), f("op", `"incr"`), f("value", `1`)), crdt.ErrWrongKind},
		{"remove on a counter", wire(f("kind", `"counter"`), f("op", `"remove"`)), crdt.ErrWrongKind},
		{"delete with a field", wire(f("op", `"delete"`)), crdt.ErrInvalid},
		{"delete with a kind", wire(f("op", `"delete"`), f("field", "-"), f("value", "-"), f("ctx", "-")), crdt.ErrInvalid},
		{"delete with a value", wire(f("op", `"delete"`), f("field", "-"), f("kind", "-"), f("ctx", "-")), crdt.ErrInvalid},
		{"incr of a fraction", wire(f("kind", `"counter"`), f("op", `"incr"`), f("value", `1.5`), f("ctx", "-")), crdt.ErrInvalid},
		{"incr of a string", wire(f("kind", `"counter"`), f("op", `"incr"`), f("value", `"1"`), f("ctx", "-")), crdt.ErrInvalid},
		{"incr past int64", wire(f("kind", `"counter"`), f("op", `"incr"`), f("value", `9223372036854775808`), f("ctx", "-")), crdt.ErrInvalid},
		{"total on a set", wire(f("total", `5`)), crdt.ErrInvalid},
		{"context over the limit", wire(f("ctx", "["+strings.Repeat(dot+",", 3)+dot+"]")), crdt.ErrInvalid},
		{"zero dot in context", wire(f("ctx", `[{"replica":"00000000-0000-0000-0000-000000000000","seq":1}]`)), crdt.ErrInvalid},
		{"dot with seq 0", wire(f("ctx", `[{"replica":"0b7e3a6c-1d2f-4e5a-8b9c-0d1e2f3a4b5c","seq":0}]`)), crdt.ErrInvalid},
		{"unknown field in a dot", wire(f("ctx", `[{"replica":"0b7e3a6c-1d2f-4e5a-8b9c-0d1e2f3a4b5c","seq":1,"x":1}]`)), crdt.ErrInvalid},
	}
	if _, err := crdt.DecodeChange([]byte(wire()), lim); err != nil {
		t.Fatalf("the base change must decode: %v", err)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := crdt.DecodeChange([]byte(tc.in), lim)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v\ninput %s", err, tc.want, tc.in)
			}
			// The whole family is recognisable, except a wrong kind,
			// which callers map to a conflict rather than bad input.
			if !errors.Is(err, crdt.ErrInvalid) && !errors.Is(err, crdt.ErrWrongKind) {
				t.Fatalf("err = %v does not wrap ErrInvalid", err)
			}
			if !reflect.DeepEqual(c, crdt.Change{}) {
				t.Fatalf("refused change returned partly: %+v", c)
			}
			// One bad change refuses its batch, and says which.
			_, err = crdt.DecodeChanges([]byte("["+wire()+","+tc.in+"]"), lim)
			if !errors.Is(err, crdt.ErrInvalid) && !errors.Is(err, crdt.ErrWrongKind) {
				t.Fatalf("batch err = %v", err)
			}
		})
	}
}

func TestDecodeChangesBatch(t *testing.T) {
	lim := crdt.DefaultLimits
	cs, err := crdt.DecodeChanges([]byte("["+wire()+","+wire(wireField{"seq", "8"})+"]"), lim)
	if err != nil || len(cs) != 2 || cs[1].Seq != 8 {
		t.Fatalf("got %d changes, %v", len(cs), err)
	}
	_, err = crdt.DecodeChanges([]byte("["+wire()+","+wire(wireField{"ns", `"a.b"`})+"]"), lim)
	if !errors.Is(err, crdt.ErrBadName) || !strings.Contains(err.Error(), "change 1") {
		t.Fatalf("err = %v, want ErrBadName naming change 1", err)
	}
	for _, in := range []string{wire(), `{}`, `[` + wire() + `] []`, `[` + wire() + `,]`} {
		if _, err := crdt.DecodeChanges([]byte(in), lim); !errors.Is(err, crdt.ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", in, err)
		}
	}
	if cs, err := crdt.DecodeChanges([]byte(`[]`), lim); err != nil || len(cs) != 0 {
		t.Fatalf("empty batch: %v %v", cs, err)
	}
	// A batch is bounded in depth before the decoder recurses into it.
	deep := "[" + strings.Repeat(`{"a":`, 100000) + "1" + strings.Repeat("}", 100000) + "]"
	if _, err := crdt.DecodeChanges([]byte(deep), lim); !errors.Is(err, crdt.ErrTooDeep) {
		t.Fatalf("deep batch: err = %v, want ErrTooDeep", err)
	}
}

// ---- Generators of valid changes.

func genID(label string) *rapid.Generator[uuid.UUID] {
	return rapid.Custom(func(t *rapid.T) uuid.UUID {
		var id uuid.UUID
		copy(id[:], rapid.SliceOfN(rapid.Byte(), 16, 16).Draw(t, label))
		if id == uuid.Nil {
			id[15] = 1
		}
		return id
	})
}

// genJSON draws a JSON value as Go data, json.Number for numbers so that
// their text is kept.
func genJSON(depth int) *rapid.Generator[any] {
	leaves := []*rapid.Generator[any]{
		rapid.Just[any](nil),
		rapid.Map(rapid.Bool(), func(b bool) any { return b }),
		rapid.Map(rapid.String(), func(s string) any { return s }),
		rapid.Map(rapid.SampledFrom([]string{"<a&b>", "\u2028", "é", "\\\"", "\x00", "😀"}), func(s string) any { return s }),
		rapid.Map(rapid.Int64(), func(n int64) any { return json.Number(fmt.Sprint(n)) }),
		rapid.Map(rapid.SampledFrom([]string{"1.50", "-0", "1e300", "2E-3", "0.1"}), func(s string) any { return json.Number(s) }),
	}
	if depth == 0 {
		return rapid.OneOf(leaves...)
	}
	return rapid.OneOf(append(leaves,
		rapid.Map(rapid.SliceOfN(genJSON(depth-1), 0, 4), func(v []any) any { return v }),
		rapid.Map(rapid.MapOfN(rapid.String(), genJSON(depth-1), 0, 4), func(v map[string]any) any { return v }),
	)...)
}

func genValue(t *rapid.T) json.RawMessage {
	b, err := json.Marshal(genJSON(3).Draw(t, "json"))
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	v, err := crdt.Canonical(b, crdt.DefaultLimits)
	if err != nil {
		t.Fatalf("canonical %s: %v", b, err)
	}
	return v
}

var validOps = []struct {
	kind crdt.Kind
	op   crdt.Op
}{
	{crdt.KindNone, crdt.OpDelete},
	{crdt.KindLWW, crdt.OpSet}, {crdt.KindLWW, crdt.OpResolve},
	{crdt.KindManual, crdt.OpSet}, {crdt.KindManual, crdt.OpResolve},
	{crdt.KindORSet, crdt.OpAdd}, {crdt.KindORSet, crdt.OpRemove},
	{crdt.KindCounter, crdt.OpIncr},
}

var genChange = rapid.Custom(func(t *rapid.T) crdt.Change {
	c := crdt.Change{
		ID:     genID("id").Draw(t, "id"),
		Origin: genID("origin").Draw(t, "origin"),
		Seq:    rapid.Uint64Min(1).Draw(t, "seq"),
		HLC:    hlc.Timestamp(rapid.Uint64Min(1).Draw(t, "hlc")),
		NS:     rapid.StringMatching(`[A-Za-z0-9_-]{1,64}`).Draw(t, "ns"),
		Coll:   rapid.StringMatching(`[A-Za-z0-9_-]{1,64}`).Draw(t, "coll"),
		Doc:    rapid.StringMatching(`[A-Za-z0-9_.:-]{1,128}`).Draw(t, "doc"),
	}
	if rapid.Bool().Draw(t, "accepted") {
		c.Region, c.RSeq = genID("region").Draw(t, "region"), rapid.Uint64Min(1).Draw(t, "rseq")
	}
	ko := rapid.SampledFrom(validOps).Draw(t, "op")
	c.Kind, c.Op = ko.kind, ko.op
	if c.Op == crdt.OpDelete {
		return c
	}
	c.Field = rapid.StringMatching(`[A-Za-z0-9_.:-]{1,64}`).Draw(t, "field")
	if c.Op == crdt.OpIncr {
		c.Value = json.RawMessage(fmt.Sprint(rapid.Int64().Draw(t, "delta")))
		c.Total = rapid.Int64().Draw(t, "total")
	} else {
		c.Value = genValue(t)
	}
	for i, n := 0, rapid.IntRange(0, 4).Draw(t, "ctx"); i < n; i++ {
		c.Context = append(c.Context, crdt.Dot{Replica: genID("dot").Draw(t, "dot"), Seq: rapid.Uint64Min(1).Draw(t, "dotSeq")})
	}
	return c
})

func TestCodecRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		cs := rapid.SliceOfN(genChange, 1, 5).Draw(t, "changes")
		for _, c := range cs {
			if err := c.Validate(crdt.DefaultLimits); err != nil {
				t.Fatalf("generated change is invalid: %v\n%+v", err, c)
			}
			// A change inside any json.Marshal'd message keeps its
			// value's bytes, so the receiver sees it canonical.
			b, err := json.Marshal(c)
			if err != nil {
				t.Fatalf("marshal: %v", err)
			}
			got, err := crdt.DecodeChange(b, crdt.DefaultLimits)
			if err != nil {
				t.Fatalf("decode %s: %v", b, err)
			}
			if !reflect.DeepEqual(got, c) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, c)
			}
		}
		b, err := crdt.EncodeChanges(cs)
		if err != nil {
			t.Fatalf("encode: %v", err)
		}
		got, err := crdt.DecodeChanges(b, crdt.DefaultLimits)
		if err != nil {
			t.Fatalf("decode batch: %v", err)
		}
		if !reflect.DeepEqual(got, cs) {
			t.Fatalf("batch round trip:\n got %+v\nwant %+v", got, cs)
		}
	})
}

func TestCanonical(t *testing.T) {
	lim := crdt.DefaultLimits
	for in, want := range map[string]string{
		` { "b" : [1, 2.50 ,-0], "a": null } `: `{"a":null,"b":[1,2.50,-0]}`,
		`"\u00e9\u0041"`:                       `"éA"`,
		`"<a&b>"`:                              `"\u003ca\u0026b\u003e"`,
		"\"\u2028\"":                           `"\u2028"`,
		`1e3`:                                  `1e3`,
	} {
		got, err := crdt.Canonical([]byte(in), lim)
		if err != nil || string(got) != want {
			t.Errorf("Canonical(%s) = %s, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{``, `{`, `1 2`, `[1,]`, `{"a"}`, `nul`} {
		if _, err := crdt.Canonical([]byte(in), lim); !errors.Is(err, crdt.ErrInvalid) {
			t.Errorf("Canonical(%q): err = %v, want ErrInvalid", in, err)
		}
	}
	if _, err := crdt.Canonical([]byte(nested(65)), lim); !errors.Is(err, crdt.ErrTooDeep) {
		t.Errorf("65 deep: err = %v", err)
	}
	if _, err := crdt.Canonical([]byte(nested(64)), lim); err != nil {
		t.Errorf("64 deep: err = %v", err)
	}
	// Brackets inside strings are not nesting.
	if _, err := crdt.Canonical([]byte(`["[[[[[[[[\"[[[[[["]`), crdt.Limits{MaxValueBytes: 100, MaxDepth: 1}); err != nil {
		t.Errorf("brackets in a string: %v", err)
	}
	big := `"` + strings.Repeat("x", 10) + `"`
	if _, err := crdt.Canonical([]byte(big), crdt.Limits{MaxValueBytes: 11, MaxDepth: 4}); !errors.Is(err, crdt.ErrValueTooBig) {
		t.Errorf("12 bytes over 11: err = %v", err)
	}
	if _, err := crdt.Canonical([]byte(big), crdt.Limits{MaxValueBytes: 12, MaxDepth: 4}); err != nil {
		t.Errorf("12 bytes at 12: err = %v", err)
	}

	rapid.Check(t, func(t *rapid.T) {
		v := genValue(t)
		again, err := crdt.Canonical(v, lim)
		if err != nil || !bytes.Equal(again, v) {
			t.Fatalf("not idempotent: %s -> %s, %v", v, again, err)
		}
		if err := crdt.CheckValue(v, lim); err != nil {
			t.Fatalf("CheckValue(%s): %v", v, err)
		}
		m, err := json.Marshal(json.RawMessage(v))
		if err != nil || !bytes.Equal(m, v) {
			t.Fatalf("json.Marshal changes the canonical form: %s -> %s", v, m)
		}
	})
}

func TestChangeAccessors(t *testing.T) {
	c, err := crdt.DecodeChange([]byte(wire()), crdt.DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	if c.Dot() != (crdt.Dot{Replica: c.Origin, Seq: 7}) || c.RegionDot() != (crdt.Dot{Replica: c.Region, Seq: 42}) {
		t.Errorf("dots: %v %v", c.Dot(), c.RegionDot())
	}
	if c.Stamp() != (crdt.Stamp{HLC: c.HLC, Replica: c.Origin}) {
		t.Errorf("stamp: %v", c.Stamp())
	}
	if got := c.Key().String(); got != "app/items/doc-1#title" {
		t.Errorf("key: %s", got)
	}
	if c.Key().DocKey() != c.DocKey() || c.DocKey().String() != "app/items/doc-1" {
		t.Errorf("doc key: %v", c.DocKey())
	}
	if c.Delta() != 0 {
		t.Errorf("delta of a set: %d", c.Delta())
	}
	c.Op, c.Value = crdt.OpIncr, json.RawMessage(`-12`)
	if c.Delta() != -12 {
		t.Errorf("delta: %d", c.Delta())
	}
}

func TestKindAndOpNames(t *testing.T) {
	for _, k := range []crdt.Kind{crdt.KindLWW, crdt.KindORSet, crdt.KindCounter, crdt.KindManual} {
		got, err := crdt.ParseKind(k.String())
		if err != nil || got != k {
			t.Errorf("ParseKind(%s) = %v, %v", k, got, err)
		}
	}
	for _, s := range []string{"", "LWW", "set", "none"} {
		if _, err := crdt.ParseKind(s); !errors.Is(err, crdt.ErrUnknownKind) {
			t.Errorf("ParseKind(%q): err = %v", s, err)
		}
	}
	for o := crdt.OpSet; o <= crdt.OpResolve; o++ {
		got, err := crdt.ParseOp(o.String())
		if err != nil || got != o {
			t.Errorf("ParseOp(%s) = %v, %v", o, got, err)
		}
	}
	for _, s := range []string{"", "SET", "lww"} {
		if _, err := crdt.ParseOp(s); !errors.Is(err, crdt.ErrUnknownOp) {
			t.Errorf("ParseOp(%q): err = %v", s, err)
		}
	}
	if s := crdt.Kind(9).String(); s != "kind(9)" {
		t.Errorf("Kind(9) = %s", s)
	}
	if s := crdt.Op(math.MaxUint8).String(); s != "op(255)" {
		t.Errorf("Op(255) = %s", s)
	}
}
