// Package workload makes the changes the core's benchmarks apply, the way
// replicas make them: several writers, each preparing its op through the
// kind's resolver policy against its own state and exchanging everything
// it made every so often, so contexts, siblings, set tags and counter
// totals are the ones real traffic carries. The crdt and replica
// benchmarks share it, so "the same workload" is one piece of code.
package workload

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/resolver"
)

// T0 is the writers' physical clock at the start, in Unix milliseconds;
// it advances 1 ms every 50 ops.
const T0 = int64(1_700_000_000_000)

// NS and Coll are where the changes are written.
const (
	NS   = "bench"
	Coll = "products"
)

// FieldOf is the field a kind writes in a benchmark document: one field
// per kind, as in a product document with a title, notes, a cart and a
// stock count.
var FieldOf = map[crdt.Kind]string{
	crdt.KindLWW: "title", crdt.KindManual: "notes", crdt.KindORSet: "cart", crdt.KindCounter: "stock",
}

// Config says what the writers do.
type Config struct {
	Kinds   []crdt.Kind // each op picks one of these, uniformly
	Writers int
	Docs    int // ops pick a document uniformly
	Ops     int
	Every   int // all writers exchange everything after this many ops
	Seed    uint64
}

type writer struct {
	id     crdt.ReplicaID
	seq    uint64
	clock  *hlc.Clock
	fields map[crdt.FieldKey]*crdt.Field
	seen   int // how much of the global change list it has applied
}

func (wr *writer) field(k crdt.FieldKey) *crdt.Field {
	f := wr.fields[k]
	if f == nil {
		f = &crdt.Field{}
		wr.fields[k] = f
	}
	return f
}

// Changes runs the workload and returns every change in the order made,
// and one writer's final state after a last full exchange (every writer
// holds the same by then).
func (w Config) Changes() ([]crdt.Change, map[crdt.FieldKey]*crdt.Field) {
	rng := rand.New(rand.NewPCG(w.Seed, 1))
	phys := hlc.NewManualClock(T0)
	ws := make([]*writer, w.Writers)
	for i := range ws {
		ws[i] = &writer{
			id:     crdt.ReplicaID{0xd0, byte(i + 1)},
			clock:  hlc.NewClock(phys.Now, 0),
			fields: map[crdt.FieldKey]*crdt.Field{},
		}
	}
	docs := make([]string, w.Docs)
	for i := range docs {
		docs[i] = "p" + strconv.Itoa(i)
	}
	all := make([]crdt.Change, 0, w.Ops)
	exchange := func() {
		for _, wr := range ws {
			for ; wr.seen < len(all); wr.seen++ {
				c := &all[wr.seen]
				if c.Origin == wr.id {
					continue
				}
				_ = wr.clock.Update(c.HLC)
				wr.field(c.Key()).Apply(c)
			}
		}
	}
	for n := 0; n < w.Ops; n++ {
		if n > 0 && n%w.Every == 0 {
			exchange()
		}
		if n%50 == 0 {
			phys.Advance(time.Millisecond)
		}
		wr := ws[rng.IntN(len(ws))]
		k := w.Kinds[rng.IntN(len(w.Kinds))]
		c := crdt.Change{
			NS: NS, Coll: Coll, Doc: docs[rng.IntN(len(docs))], Field: FieldOf[k], Kind: k,
			Origin: wr.id,
		}
		switch k {
		case crdt.KindLWW:
			c.Op, c.Value = crdt.OpSet, []byte(`"title `+strconv.Itoa(n)+`"`)
		case crdt.KindManual:
			c.Op, c.Value = crdt.OpSet, []byte(`"note `+strconv.Itoa(n)+`"`)
			if rng.IntN(5) == 0 {
				c.Op = crdt.OpResolve
			}
		case crdt.KindORSet:
			c.Op, c.Value = crdt.OpAdd, []byte(`"sku-`+strconv.Itoa(rng.IntN(12))+`"`)
			if rng.IntN(3) == 0 {
				c.Op = crdt.OpRemove
			}
		case crdt.KindCounter:
			c.Op, c.Value = crdt.OpIncr, []byte(strconv.Itoa(rng.IntN(9)-3))
		}
		f := wr.field(c.Key())
		if err := resolver.For(k).Prepare(f, &c); err != nil {
			panic(fmt.Sprintf("prepare %s %s: %v", k, c.Op, err))
		}
		wr.seq++
		c.Seq, c.HLC = wr.seq, wr.clock.Now()
		c.ID = uuid.UUID{0xc0, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n), 0, 0x40, 0, 0x80}
		f.Apply(&c)
		all = append(all, c)
	}
	exchange()
	return all, ws[0].fields
}
