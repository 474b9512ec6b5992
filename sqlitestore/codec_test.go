package sqlitestore

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/google/uuid"
	"pgregory.net/rapid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
)

var replicaPool = []uuid.UUID{{1}, {2}, {3}, {0xff, 0xee}, {9, 9, 9}}

func genReplica(t *rapid.T, label string) uuid.UUID {
	if rapid.Bool().Draw(t, label+"_new") {
		var u uuid.UUID
		copy(u[:], rapid.SliceOfN(rapid.Byte(), 16, 16).Draw(t, label+"_bytes"))
		return u
	}
	return rapid.SampledFrom(replicaPool).Draw(t, label)
}

func genValue(t *rapid.T, label string) json.RawMessage {
	return json.RawMessage(rapid.SampledFrom([]string{`1`, `"a"`, `"bb"`, `null`, `{"x":[1,2]}`, `-12.5e3`, `true`}).Draw(t, label))
}

// genChange draws a valid-looking change of any kind and op.
func genChange(t *rapid.T) crdt.Change {
	op := rapid.SampledFrom([]crdt.Op{crdt.OpSet, crdt.OpResolve, crdt.OpAdd, crdt.OpRemove, crdt.OpIncr, crdt.OpDelete}).Draw(t, "op")
	c := crdt.Change{
		ID: uuid.New(), Origin: genReplica(t, "origin"), Seq: rapid.Uint64Range(1, 1<<40).Draw(t, "seq"),
		HLC: hlc.Timestamp(rapid.Uint64().Draw(t, "hlc")), NS: "ns",
		Coll: rapid.StringMatching(`[a-z]{1,8}`).Draw(t, "coll"), Doc: rapid.StringMatching(`[a-z0-9:.]{1,12}`).Draw(t, "doc"),
		Field: rapid.StringMatching(`[a-z]{1,8}`).Draw(t, "field"), Op: op,
	}
	switch rapid.IntRange(0, 2).Draw(t, "stamp") {
	case 1:
		c.Region, c.RSeq = c.Origin, c.Seq
	case 2:
		c.Region, c.RSeq = genReplica(t, "region"), rapid.Uint64().Draw(t, "rseq")
	}
	switch op {
	case crdt.OpSet, crdt.OpResolve:
		c.Kind = rapid.SampledFrom([]crdt.Kind{crdt.KindLWW, crdt.KindManual}).Draw(t, "kind")
		c.Value = genValue(t, "value")
	case crdt.OpAdd, crdt.OpRemove:
		c.Kind, c.Value = crdt.KindORSet, genValue(t, "value")
	case crdt.OpIncr:
		d := rapid.Int64Range(-1000, 1000).Draw(t, "delta")
		c.Kind, c.Value, c.Total = crdt.KindCounter, json.RawMessage(fmt.Sprint(d)), rapid.Int64().Draw(t, "total")
	case crdt.OpDelete:
		c.Field = ""
	}
	if op != crdt.OpDelete {
		for i := range rapid.IntRange(0, 4).Draw(t, "nctx") {
			c.Context = append(c.Context, crdt.Dot{Replica: genReplica(t, fmt.Sprint("ctx", i)), Seq: rapid.Uint64Range(1, 1<<20).Draw(t, "ctxseq")})
		}
	}
	return c
}

func genField(t *rapid.T) *crdt.Field {
	f := &crdt.Field{}
	for range rapid.IntRange(0, 40).Draw(t, "n") {
		c := genChange(t)
		f.Apply(&c)
	}
	return f
}

func TestFieldCodecRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		f := genField(t)
		b := appendField([]byte("prefix"), f)
		g, err := decodeField(b[len("prefix"):])
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		if !reflect.DeepEqual(f, g) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", g, f)
		}
	})
}

// TestFieldCodecManyReplicas crosses the dictionary's switch to a map.
func TestFieldCodecManyReplicas(t *testing.T) {
	f := &crdt.Field{}
	for i := range 100 {
		c := crdt.Change{Origin: uuid.UUID{byte(i), 1}, Seq: uint64(i + 1), HLC: hlc.Timestamp(i + 1), Op: crdt.OpIncr,
			Kind: crdt.KindCounter, Value: json.RawMessage(`1`), Total: int64(i)}
		f.Apply(&c)
	}
	g, err := decodeField(appendField(nil, f))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(f, g) {
		t.Fatal("round trip of a 100-replica counter differs")
	}
}

func TestChangeCodecRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		c := genChange(t)
		got, err := decodeChange(appendChange(nil, &c), c.NS)
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		if !reflect.DeepEqual(c, got) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, c)
		}
	})
}

func TestVectorCodecRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		v := crdt.Vector{}
		for i := range rapid.IntRange(0, 6).Draw(t, "n") {
			v[genReplica(t, fmt.Sprint("r", i))] = rapid.Uint64().Draw(t, "seq")
		}
		got, err := decodeVector(appendVector(nil, v))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(v, got) {
			t.Fatalf("got %v want %v", got, v)
		}
	})
}

// TestDecodeDamaged: every truncation of a valid blob is an error, and
// every single-byte change decodes to an error or to some value, never a
// panic.
func TestDecodeDamaged(t *testing.T) {
	decField := func(b []byte) error { _, err := decodeField(b); return err }
	decChange := func(b []byte) error { _, err := decodeChange(b, "ns"); return err }
	decVector := func(b []byte) error { _, err := decodeVector(b); return err }
	rapid.Check(t, func(t *rapid.T) {
		f := genField(t)
		c := genChange(t)
		for _, tc := range []struct {
			b   []byte
			dec func([]byte) error
		}{
			{appendField(nil, f), decField},
			{appendChange(nil, &c), decChange},
			{appendVector(nil, crdt.Vector{regA: 3, regB: 1 << 40}), decVector},
		} {
			if err := tc.dec(tc.b); err != nil {
				t.Fatalf("valid blob: %v", err)
			}
			for i := range tc.b {
				if err := tc.dec(tc.b[:i]); err == nil {
					t.Fatalf("truncation to %d of %d bytes decoded", i, len(tc.b))
				}
				m := append([]byte(nil), tc.b...)
				m[i] ^= byte(rapid.IntRange(1, 255).Draw(t, "flip"))
				_ = tc.dec(m)
			}
		}
	})
}

// decodeAny runs every decoder over b.
func decodeAny(b []byte) {
	_, _ = decodeField(b)
	_, _ = decodeChange(b, "ns")
	_, _ = decodeVector(b)
}

func FuzzDecode(f *testing.F) {
	c := own(regA, 7, "d", "f", `"v"`, crdt.Dot{Replica: regB, Seq: 3})
	f.Add(appendChange(nil, &c))
	f.Add(appendField(nil, fieldsOf(c)[0].State))
	f.Add(appendVector(nil, crdt.Vector{regA: 1, regB: 2}))
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		decodeAny(b) // must not panic or allocate without bound
	})
}

// typicalFields are the states BenchmarkFieldCodec measures: an lww field
// after a few writes, a manual field in conflict, a cart, a counter.
func typicalFields() map[string]*crdt.Field {
	lww := &crdt.Field{}
	var prev []crdt.Dot
	for i := uint64(1); i <= 3; i++ {
		c := own(regA, i, "d", "title", fmt.Sprintf(`"Senior Engineer %d"`, i), prev...)
		lww.Apply(&c)
		prev = []crdt.Dot{c.Dot()}
	}
	manual := &crdt.Field{}
	for _, r := range []uuid.UUID{regA, regB, device} {
		c := mkChange(r, 5, r, 5, "items", "d", "title", crdt.OpSet, crdt.KindManual, `"a value of moderate length"`)
		manual.Apply(&c)
	}
	cart := &crdt.Field{}
	for i := uint64(1); i <= 10; i++ {
		c := mkChange(device, i, regA, 100+i, "carts", "c", "items", crdt.OpAdd, crdt.KindORSet, fmt.Sprintf(`{"sku":"sku-%d","qty":%d}`, i, i))
		cart.Apply(&c)
	}
	ctr := &crdt.Field{}
	for i, r := range []uuid.UUID{regA, regB, device, {4}} {
		c := mkChange(r, uint64(i+1), r, uint64(i+1), "items", "d", "n", crdt.OpIncr, crdt.KindCounter, `3`)
		ctr.Apply(&c)
	}
	return map[string]*crdt.Field{"lww": lww, "manual": manual, "orset10": cart, "counter": ctr}
}

// BenchmarkFieldCodec compares the binary encoding with encoding/json for
// one encode plus one decode of a field state, the cost every write of a
// stored field pays (read it, change it, write it back).
func BenchmarkFieldCodec(b *testing.B) {
	for _, name := range []string{"lww", "manual", "orset10", "counter"} {
		f := typicalFields()[name]
		b.Run(name+"/binary", func(b *testing.B) {
			var buf []byte
			b.ReportAllocs()
			for b.Loop() {
				buf = appendField(buf[:0], f)
				if _, err := decodeField(buf); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(buf)), "bytes")
		})
		b.Run(name+"/json", func(b *testing.B) {
			var buf []byte
			b.ReportAllocs()
			for b.Loop() {
				var err error
				buf, err = json.Marshal(f)
				if err != nil {
					b.Fatal(err)
				}
				var g crdt.Field
				if err := json.Unmarshal(buf, &g); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(buf)), "bytes")
		})
	}
}

// TestCodecCoversEveryField fails when the core gains a field the binary
// encoding does not carry: add it to codec.go (with a new version byte if
// old rows must still decode), then here.
func TestCodecCoversEveryField(t *testing.T) {
	for _, tc := range []struct {
		v    any
		want string
	}{
		{crdt.Change{}, "ID Origin Seq HLC Region RSeq NS Coll Doc Field Kind Op Value Total Context"},
		{crdt.FieldState{}, "Last LastKind Reg Set Ctr"},
		{crdt.Stamp{}, "HLC Replica"},
		{crdt.Register{}, "Sibs Dead"},
		{crdt.Sibling{}, "Dot HLC Value"},
		{crdt.Dot{}, "Replica Seq"},
		{crdt.ORSet{}, "Elems"},
		{crdt.Element{}, "Value Adds Dead"},
		{crdt.Tag{}, "Dot HLC"},
		{crdt.Counter{}, "Parts"},
		{crdt.Part{}, "Replica Seq Total HLC"},
	} {
		typ := reflect.TypeOf(tc.v)
		var names []string
		for i := range typ.NumField() {
			names = append(names, typ.Field(i).Name)
		}
		if got := strings.Join(names, " "); got != tc.want {
			t.Errorf("%s has fields %q; the codec encodes %q", typ, got, tc.want)
		}
	}
}
