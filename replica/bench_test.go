package replica_test

import (
	"encoding/json"
	"fmt"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/internal/workload"
	"github.com/syncd/syncd/replica"
	"github.com/syncd/syncd/resolver"
)

// The replica-level benchmarks time a region taking in another region's
// traffic the way the node loop does: Step a MsgBatch, then Ready, Save
// into a MemStorage, Advance. So they count what the crdt-level apply
// benchmark leaves out: validating every change (names, canonical value),
// the dedup look-up by dot, copy-on-write of field states, the Ready's
// sorted field list, the log and the fan-out.

const benchNS = "bench"

var (
	srcRegion = crdt.ReplicaID{0x5e, 1} // the region the batches come from
	dstRegion = crdt.ReplicaID{0xde, 1} // the region under test
	benchT0   = int64(1_700_000_000_000)
)

// fieldOf is the field a kind writes in a benchmark document.
var fieldOf = map[crdt.Kind]string{
	crdt.KindLWW: "title", crdt.KindManual: "notes", crdt.KindORSet: "cart", crdt.KindCounter: "stock",
}

// writer is a device writing under srcRegion: it prepares each op through
// the kind's policy against its own state, so contexts are real.
type writer struct {
	id     crdt.ReplicaID
	seq    uint64
	clock  *hlc.Clock
	fields map[crdt.FieldKey]*crdt.Field
	seen   int
}

func newWriters(n int, phys *hlc.ManualClock) []*writer {
	ws := make([]*writer, n)
	for i := range ws {
		ws[i] = &writer{id: crdt.ReplicaID{0xd0, byte(i + 1)}, clock: hlc.NewClock(phys.Now, 0),
			fields: map[crdt.FieldKey]*crdt.Field{}}
	}
	return ws
}

func (wr *writer) field(k crdt.FieldKey) *crdt.Field {
	f := wr.fields[k]
	if f == nil {
		f = &crdt.Field{}
		wr.fields[k] = f
	}
	return f
}

// write prepares, stamps and applies one op at its writer.
func (wr *writer) write(c crdt.Change, id int) crdt.Change {
	c.NS, c.Origin = benchNS, wr.id
	f := wr.field(c.Key())
	if err := resolver.For(c.Kind).Prepare(f, &c); err != nil {
		panic(fmt.Sprintf("prepare %s %s: %v", c.Kind, c.Op, err))
	}
	wr.seq++
	c.Seq, c.HLC = wr.seq, wr.clock.Now()
	c.ID = uuid.UUID{0xc0, byte(id >> 24), byte(id >> 16), byte(id >> 8), byte(id), 0, 0x40, 0, 0x80}
	f.Apply(&c)
	return c
}

// exchange brings every writer up to date with all changes made so far.
func exchange(ws []*writer, all []crdt.Change) {
	for _, wr := range ws {
		for ; wr.seen < len(all); wr.seen++ {
			c := &all[wr.seen]
			if c.Origin != wr.id {
				_ = wr.clock.Update(c.HLC)
				wr.field(c.Key()).Apply(c)
			}
		}
	}
}

// mixedChanges makes ops changes by 4 writers on docs documents, all
// writers exchanging every 1,000 ops, each op of one of kinds. The changes
// are stamped by srcRegion in the order made, as srcRegion would stamp its
// devices' pushes.
func mixedChanges(kinds []crdt.Kind, docs, ops int, seed uint64) []crdt.Change {
	cs, _ := workload.Config{Kinds: kinds, Writers: 4, Docs: docs, Ops: ops, Every: 1000, Seed: seed}.Changes()
	return stamp(cs)
}

// stamp gives changes srcRegion's region stamps, in order.
func stamp(cs []crdt.Change) []crdt.Change {
	for i := range cs {
		cs[i].Region, cs[i].RSeq = srcRegion, uint64(i+1)
	}
	return cs
}

// batches cuts stamped changes into MsgBatch messages of size changes from
// srcRegion, each continuing the last.
func batches(cs []crdt.Change, size int) []replica.Message {
	var ms []replica.Message
	for lo := 0; lo < len(cs); lo += size {
		hi := min(lo+size, len(cs))
		ms = append(ms, replica.Message{
			Type: replica.MsgBatch, NS: benchNS, From: srcRegion, To: dstRegion,
			Base: crdt.Vector{srcRegion: uint64(lo)}, Head: crdt.Vector{srcRegion: uint64(hi)},
			Changes: cs[lo:hi],
		})
	}
	return ms
}

// region is a replica under test with its store, run as the node loop
// runs it: step, then persist the Ready, then Advance.
type region struct {
	r  *replica.Replica
	st *replica.MemStorage
}

func newRegion(physMillis int64) region {
	st := replica.NewMemStorage()
	phys := hlc.NewManualClock(physMillis)
	r := replica.New(replica.Config{ID: dstRegion, NS: benchNS, Role: replica.RoleRegion,
		Clock: hlc.NewClock(phys.Now, 0), Storage: st})
	return region{r, st}
}

func (g region) flush() {
	for g.r.HasReady() {
		rd := g.r.Ready()
		g.st.Save(&rd)
		g.r.Advance()
	}
}

func (g region) step(tb testing.TB, m replica.Message) {
	if err := g.r.Step(m); err != nil {
		tb.Fatalf("step: %v", err)
	}
	g.flush()
}

var benchKinds = []struct {
	name  string
	kinds []crdt.Kind
}{
	{"lww", []crdt.Kind{crdt.KindLWW}},
	{"manual", []crdt.Kind{crdt.KindManual}},
	{"orset", []crdt.Kind{crdt.KindORSet}},
	{"counter", []crdt.Kind{crdt.KindCounter}},
	{"mixed", []crdt.Kind{crdt.KindLWW, crdt.KindManual, crdt.KindORSet, crdt.KindCounter}},
}

// BenchmarkStepBatch feeds 100,000 changes (the crdt apply benchmark's
// workload, stamped by another region) to a fresh region as 100 MsgBatch
// messages of 1,000, persisting each Ready into a MemStorage.
func BenchmarkStepBatch(b *testing.B) {
	for _, docs := range []int{1_000, 100_000} {
		for _, bk := range benchKinds {
			b.Run(fmt.Sprintf("kind=%s/docs=%d", bk.name, docs), func(b *testing.B) {
				cs := mixedChanges(bk.kinds, docs, 100_000, 1)
				ms := batches(cs, 1000)
				now := benchT0 + int64(len(cs)) // every stamp within the skew bound
				b.ReportAllocs()
				for b.Loop() {
					g := newRegion(now)
					for _, m := range ms {
						g.step(b, m)
					}
				}
				n := float64(len(cs)) * float64(b.N)
				b.ReportMetric(n/b.Elapsed().Seconds(), "changes/s")
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/n, "ns/change")
			})
		}
	}
}

// TestStepBatchWorkload checks the replica-level benchmark does what it
// says: every change is applied, logged and acknowledged, and the region
// ends with the same field states as a plain in-order apply.
func TestStepBatchWorkload(t *testing.T) {
	for _, bk := range benchKinds {
		cs := mixedChanges(bk.kinds, 40, 3_000, 3)
		g := newRegion(benchT0 + int64(len(cs)))
		for _, m := range batches(cs, 1000) {
			g.step(t, m)
		}
		if got := g.r.DurableVector()[srcRegion]; got != uint64(len(cs)) {
			t.Fatalf("%s: vector holds %d of %d changes", bk.name, got, len(cs))
		}
		if n := len(g.st.Logs[srcRegion]); n != len(cs) {
			t.Fatalf("%s: log holds %d of %d changes", bk.name, n, len(cs))
		}
		want := map[crdt.FieldKey]*crdt.Field{}
		for i := range cs {
			k := cs[i].Key()
			if want[k] == nil {
				want[k] = &crdt.Field{}
			}
			want[k].Apply(&cs[i])
		}
		for k, f := range want {
			got, _ := g.st.Field(k)
			if !sameJSON(got, f) {
				t.Fatalf("%s: field %s differs from an in-order apply", bk.name, k)
			}
		}
	}
}

func sameJSON(a, b any) bool {
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(x) == string(y)
}

// heapInUse returns the live heap after collecting garbage.
func heapInUse() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// memFields are the five fields of a memory-test document: one of each
// kind plus a second lww field, with small realistic values.
var memFields = []struct {
	name string
	kind crdt.Kind
	op   crdt.Op
	val  func(i int) string
}{
	{"title", crdt.KindLWW, crdt.OpSet, func(i int) string { return `"Product ` + strconv.Itoa(i) + `"` }},
	{"price", crdt.KindLWW, crdt.OpSet, func(i int) string { return strconv.Itoa(100 + i%9000) }},
	{"tags", crdt.KindORSet, crdt.OpAdd, func(i int) string { return `"tag-` + strconv.Itoa(i%50) + `"` }},
	{"stock", crdt.KindCounter, crdt.OpIncr, func(i int) string { return strconv.Itoa(1 + i%20) }},
	{"notes", crdt.KindManual, crdt.OpSet, func(i int) string { return `"check supplier ` + strconv.Itoa(i%100) + `"` }},
}

// loadDocs writes docs documents with the given fields through a region
// replica, 100 documents per write, saving every Ready into a fresh
// MemStorage as the simulator and the browser do.
func loadDocs(tb testing.TB, docs int, fields []int) *replica.MemStorage {
	g := newRegion(benchT0)
	s := resolver.Schema{Fields: map[string]crdt.Kind{}}
	for _, f := range memFields {
		s.Fields[f.name] = f.kind
	}
	if _, err := g.r.PutSchema("products", s); err != nil {
		tb.Fatal(err)
	}
	g.flush()
	ops := make([]resolver.Op, 0, 100*len(fields))
	for lo := 0; lo < docs; lo += 100 {
		ops = ops[:0]
		for i := lo; i < min(lo+100, docs); i++ {
			id := "prod-" + strconv.Itoa(i)
			for _, fi := range fields {
				f := memFields[fi]
				ops = append(ops, resolver.Op{Coll: "products", Doc: id, Field: f.name, Op: f.op, Value: []byte(f.val(i))})
			}
		}
		if _, err := g.r.Write(ops); err != nil {
			tb.Fatal(err)
		}
		g.flush()
	}
	return g.st
}

// memReport is what a loaded MemStorage costs, in bytes of live heap.
type memReport struct {
	total, log, dots, state uint64
}

// measureLoad loads docs documents and measures the heap it holds: all of
// it, then without the change log, then without the dot index; what is
// left is the field states (and the per-document maps holding them).
func measureLoad(tb testing.TB, docs int, fields []int) memReport {
	base := heapInUse()
	st := loadDocs(tb, docs, fields)
	var r memReport
	r.total = heapInUse() - base
	st.Logs = nil
	afterLog := heapInUse() - base
	st.Dots = nil
	r.state = heapInUse() - base
	r.log, r.dots = r.total-afterLog, afterLog-r.state
	if n := len(st.DocKeys()); n != docs+1 { // and the _schema document
		tb.Fatalf("store holds %d documents, want %d", n, docs+1)
	}
	runtime.KeepAlive(st)
	return r
}

// BenchmarkMemory100kDocs loads 100,000 documents × 5 fields into a
// MemStorage and reports the live heap it holds (total, then split into
// change log, dot index and field states), and what one more field of
// each kind adds to a document (state only).
func BenchmarkMemory100kDocs(b *testing.B) {
	const docs = 100_000
	all := []int{0, 1, 2, 3, 4}
	for b.Loop() {
		r := measureLoad(b, docs, all)
		fields := float64(docs * len(all))
		b.ReportMetric(float64(r.total)/1e6, "MB-total")
		b.ReportMetric(float64(r.state)/1e6, "MB-state")
		b.ReportMetric(float64(r.log)/1e6, "MB-log")
		b.ReportMetric(float64(r.dots)/1e6, "MB-dots")
		b.ReportMetric(float64(r.total)/fields, "B/field-total")
		b.ReportMetric(float64(r.state)/fields, "B/field-state")
	}
}

// BenchmarkMemoryPerKind reports what a field of each kind costs: the
// heap of 100,000 five-field documents minus the heap of the same
// documents without that field (state only, and with its log entry and
// dot).
func BenchmarkMemoryPerKind(b *testing.B) {
	const docs = 100_000
	for _, k := range []struct {
		name  string
		field int
	}{{"lww", 0}, {"orset", 2}, {"counter", 3}, {"manual", 4}} {
		b.Run("kind="+k.name, func(b *testing.B) {
			rest := []int{1, 2, 3, 4}
			if k.field != 0 {
				rest = []int{0, 1, 2, 3, 4}
				rest = append(rest[:k.field], rest[k.field+1:]...)
			}
			for b.Loop() {
				without := measureLoad(b, docs, rest)
				with := measureLoad(b, docs, append([]int{k.field}, rest...))
				b.ReportMetric(float64(int64(with.state)-int64(without.state))/docs, "B/field-state")
				b.ReportMetric(float64(int64(with.total)-int64(without.total))/docs, "B/field-total")
			}
		})
	}
}

// The peer workload is bench/peers/yjs.js's, op for op: --replicas 3
// --keys 1000 --ops 100000 --seed 1 --every 100. Op i is made by replica r
// and sets key "k<n>" to "v<i>", with r and n drawn from the same
// mulberry32 stream; before every 100th op (and once at the end) each
// replica applies everything it has not seen. A Y.Map of 1,000 keys is
// modelled as one document with 1,000 lww fields: one map, one key per
// field, last writer wins, as in Yjs.
const (
	peerReplicas = 3
	peerKeys     = 1000
	peerOps      = 100_000
	peerSeed     = 1
	peerEvery    = 100
)

// mulberry32 is yjs.js's PRNG; uint32 arithmetic wraps exactly as the
// script's Math.imul and int32 coercions do.
func mulberry32(seed uint32) func() float64 {
	a := seed
	return func() float64 {
		a += 0x6D2B79F5
		t := a
		t = (t ^ (t >> 15)) * (t | 1)
		t ^= t + (t^(t>>7))*(t|61)
		return float64(t^(t>>14)) / 4294967296
	}
}

// peerChanges runs the peer workload and returns its changes in the order
// made, stamped by srcRegion, and the writers' converged state.
func peerChanges() ([]crdt.Change, map[crdt.FieldKey]*crdt.Field) {
	rnd := mulberry32(peerSeed)
	phys := hlc.NewManualClock(benchT0)
	ws := newWriters(peerReplicas, phys)
	all := make([]crdt.Change, 0, peerOps)
	for i := 0; i < peerOps; i++ {
		r := int(rnd() * peerReplicas)
		n := int(rnd() * peerKeys)
		if i > 0 && i%peerEvery == 0 {
			exchange(ws, all)
		}
		if i%50 == 0 {
			phys.Advance(time.Millisecond)
		}
		c := crdt.Change{Coll: "peer", Doc: "m", Field: "k" + strconv.Itoa(n), Kind: crdt.KindLWW, Op: crdt.OpSet,
			Value: []byte(`"v` + strconv.Itoa(i) + `"`)}
		all = append(all, ws[r].write(c, i))
	}
	exchange(ws, all)
	return stamp(all), ws[0].fields
}

// BenchmarkPeerWorkload applies the peer workload's 100,000 changes into
// fresh state at four depths: crdt (Field.Apply into a map, as
// BenchmarkApply), decode+crdt (each change decoded from its own JSON
// encoding first, as Y.applyUpdate decodes each update), replica (100
// MsgBatch messages of 1,000 into a region over a MemStorage), and
// wire+replica (the same batches JSON-decoded first, as natsbus receives
// them).
func BenchmarkPeerWorkload(b *testing.B) {
	cs, want := peerChanges()
	enc := make([][]byte, len(cs))
	for i := range cs {
		var err error
		if enc[i], err = json.Marshal(&cs[i]); err != nil {
			b.Fatal(err)
		}
	}
	check := func(b *testing.B, got func(crdt.FieldKey) *crdt.Field) {
		for k, f := range want {
			if !sameJSON(got(k), f) {
				b.Fatalf("field %s differs from the replicas' converged state", k)
			}
		}
	}
	report := func(b *testing.B) {
		n := float64(len(cs)) * float64(b.N)
		b.ReportMetric(n/b.Elapsed().Seconds(), "changes/s")
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/n, "ns/change")
	}
	apply := func(s map[crdt.FieldKey]*crdt.Field, c *crdt.Change) {
		k := c.Key()
		f := s[k]
		if f == nil {
			f = &crdt.Field{}
			s[k] = f
		}
		f.Apply(c)
	}
	b.Run("level=crdt", func(b *testing.B) {
		var s map[crdt.FieldKey]*crdt.Field
		b.ReportAllocs()
		for b.Loop() {
			s = map[crdt.FieldKey]*crdt.Field{}
			for i := range cs {
				apply(s, &cs[i])
			}
		}
		report(b)
		check(b, func(k crdt.FieldKey) *crdt.Field { return s[k] })
	})
	b.Run("level=decode+crdt", func(b *testing.B) {
		var s map[crdt.FieldKey]*crdt.Field
		b.ReportAllocs()
		for b.Loop() {
			s = map[crdt.FieldKey]*crdt.Field{}
			for _, e := range enc {
				c, err := crdt.DecodeChange(e, crdt.DefaultLimits)
				if err != nil {
					b.Fatal(err)
				}
				apply(s, &c)
			}
		}
		report(b)
		check(b, func(k crdt.FieldKey) *crdt.Field { return s[k] })
	})
	b.Run("level=replica", func(b *testing.B) {
		ms := batches(cs, 1000)
		var g region
		b.ReportAllocs()
		for b.Loop() {
			g = newRegion(benchT0 + int64(len(cs)))
			for _, m := range ms {
				g.step(b, m)
			}
		}
		report(b)
		check(b, func(k crdt.FieldKey) *crdt.Field { f, _ := g.st.Field(k); return f })
	})
	b.Run("level=wire+replica", func(b *testing.B) {
		var wire [][]byte
		for _, m := range batches(cs, 1000) {
			data, err := json.Marshal(m)
			if err != nil {
				b.Fatal(err)
			}
			wire = append(wire, data)
		}
		var g region
		b.ReportAllocs()
		for b.Loop() {
			g = newRegion(benchT0 + int64(len(cs)))
			for _, data := range wire {
				var m replica.Message // as natsbus decodes a batch
				if err := json.Unmarshal(data, &m); err != nil {
					b.Fatal(err)
				}
				g.step(b, m)
			}
		}
		report(b)
		check(b, func(k crdt.FieldKey) *crdt.Field { f, _ := g.st.Field(k); return f })
	})
}

// TestPeerSchedule pins the port of yjs.js's schedule: the first ops of the
// seed-1 run (replica and key of ops 0-3, drawn as the script draws them).
func TestPeerSchedule(t *testing.T) {
	rnd := mulberry32(peerSeed)
	var got []string
	for i := 0; i < 4; i++ {
		r := int(rnd() * peerReplicas)
		n := int(rnd() * peerKeys)
		got = append(got, fmt.Sprintf("%d:k%d", r, n))
	}
	want := []string{"1:k2", "1:k981", "2:k281", "1:k720"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("schedule starts %v, yjs.js starts %v", got, want)
	}
}
