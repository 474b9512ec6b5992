package crdt_test

// Fuzz targets. Seed corpora are in testdata/fuzz/<FuzzName>/; run one with
//
//	go test ./crdt -run '^$' -fuzz '^FuzzApply$' -fuzztime 60s

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strconv"
	"testing"

	"github.com/google/uuid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/resolver"
)

// FuzzDecodeChange: the decoder never panics, refuses only with errors
// callers can recognise, and whatever it accepts survives re-encoding.
func FuzzDecodeChange(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := crdt.DecodeChange(data, crdt.DefaultLimits)
		if err != nil {
			if !errors.Is(err, crdt.ErrInvalid) && !errors.Is(err, crdt.ErrWrongKind) {
				t.Fatalf("error wraps neither ErrInvalid nor ErrWrongKind: %v", err)
			}
			return
		}
		b, err := json.Marshal(c)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		c2, err := crdt.DecodeChange(b, crdt.DefaultLimits)
		if err != nil {
			t.Fatalf("re-encoded change refused: %v\ninput %q\nencoded %s", err, data, b)
		}
		if !reflect.DeepEqual(c, c2) {
			t.Fatalf("re-decoded change differs:\n%+v\n%+v", c, c2)
		}
		b2, _ := json.Marshal(c2)
		if !bytes.Equal(b, b2) {
			t.Fatalf("encoding not stable:\n%s\n%s", b, b2)
		}
	})
}

// FuzzApply: a batch of changes applied in different orders, and twice,
// gives the same states and the same views, and never panics. Input that
// starts with '[' is a JSON batch as a peer sends it; anything else is read
// by compactChanges, which lets the fuzzer reach far more merge cases than
// mutating JSON does.
func FuzzApply(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		var cs []crdt.Change
		if len(data) > 0 && data[0] == '[' {
			var err error
			if cs, err = crdt.DecodeChanges(data, crdt.DefaultLimits); err != nil {
				return
			}
		} else {
			cs = compactChanges(t, data)
		}
		if len(cs) == 0 || !genuine(cs) {
			return
		}
		if len(cs) > 16 {
			cs = cs[:16]
		}
		rev := slices.Clone(cs)
		slices.Reverse(rev)
		rot := append(slices.Clone(cs[len(cs)/2:]), cs[:len(cs)/2]...)
		want := applyDocs(cs)
		for name, order := range map[string][]crdt.Change{"reversed": rev, "rotated": rot, "twice": slices.Concat(cs, rev)} {
			got := applyDocs(order)
			for k, d := range want {
				if g, w := stateJSON(t, got[k]), stateJSON(t, d); g != w {
					t.Fatalf("%s: %v state differs:\n got %s\nwant %s", name, k, g, w)
				}
				g, _ := json.Marshal(resolver.Render(k.Doc, got[k].Fields, nil))
				w, _ := json.Marshal(resolver.Render(k.Doc, d.Fields, nil))
				if !bytes.Equal(g, w) {
					t.Fatalf("%s: %v view differs:\n got %s\nwant %s", name, k, g, w)
				}
			}
		}
	})
}

func applyDocs(cs []crdt.Change) map[crdt.DocKey]*crdt.Doc {
	docs := map[crdt.DocKey]*crdt.Doc{}
	for i := range cs {
		c := cs[i]
		d := docs[c.DocKey()]
		if d == nil {
			d = &crdt.Doc{}
			docs[c.DocKey()] = d
		}
		d.Apply(&c)
	}
	return docs
}

// genuine reports whether a batch could come from honest replicas: a dot
// names one change, and a stamp one dot (a replica never issues an HLC
// twice). Merge deduplicates by dot and orders by stamp, so a forged batch
// that breaks either can merge differently in different orders; stopping
// that is the job of the replica's checks on who may send what, not of the
// merge.
func genuine(cs []crdt.Change) bool {
	byDot := map[crdt.Dot]crdt.Change{}
	byStamp := map[crdt.Stamp]crdt.Dot{}
	for _, c := range cs {
		if o, ok := byDot[c.Dot()]; ok {
			o.ID, o.Region, o.RSeq = c.ID, c.Region, c.RSeq // not merge inputs
			if !reflect.DeepEqual(o, c) {
				return false
			}
		}
		byDot[c.Dot()] = c
		if d, ok := byStamp[c.Stamp()]; ok && d != c.Dot() {
			return false
		}
		byStamp[c.Stamp()] = c.Dot()
	}
	return true
}

// compactChanges reads 5 bytes per change: three replicas, two fields,
// every kind and op, a small value pool, contexts naming any dot (so not
// necessarily an honest history: merge must be order-free regardless), and
// redelivery of an earlier change. A replica's seq and HLC increase, and
// its counter totals run, as an honest replica's do.
func compactChanges(t *testing.T, data []byte) []crdt.Change {
	reps := [3]crdt.ReplicaID{rid(1), rid(2), rid(3)}
	var seq [3]uint64
	var total [3]int64
	var cs []crdt.Change
	for ; len(data) >= 5 && len(cs) < 16; data = data[5:] {
		b := data[:5]
		if b[0]&0x80 != 0 && len(cs) > 0 {
			cs = append(cs, cs[int(b[1])%len(cs)])
			continue
		}
		o := int(b[0]) % 3
		seq[o]++
		ko := validOps[int(b[2]>>1)%len(validOps)]
		c := crdt.Change{ID: uuid.UUID{0: 0xcc, 15: byte(len(cs))}, Origin: reps[o], Seq: seq[o],
			HLC: hlc.Make(1000+int64(b[1]%8), uint16(seq[o])), NS: "app", Coll: "items", Doc: "d",
			Kind: ko.kind, Op: ko.op}
		if c.Op != crdt.OpDelete {
			c.Field = [2]string{"f", "g"}[b[2]&1]
			if c.Op == crdt.OpIncr {
				d := int64(int8(b[3]))
				total[o] += d
				c.Value, c.Total = json.RawMessage(strconv.FormatInt(d, 10)), total[o]
			} else {
				c.Value = json.RawMessage([3]string{`"x"`, `"y"`, `1`}[b[3]%3])
			}
			for i := 0; i < int(b[4]%4); i++ {
				c.Context = append(c.Context, crdt.Dot{Replica: reps[(int(b[4]>>2)+i)%3], Seq: 1 + uint64((int(b[4]>>4)+i)%5)})
			}
		}
		if err := c.Validate(crdt.DefaultLimits); err != nil {
			t.Fatalf("compact change invalid: %v", err)
		}
		cs = append(cs, c)
	}
	return cs
}
