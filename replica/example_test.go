package replica_test

import (
	"fmt"

	"github.com/google/uuid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/replica"
	"github.com/syncd/syncd/resolver"
)

// node is the smallest loop around a replica: persist each Ready, then
// deliver its messages, then Advance.
type node struct {
	r  *replica.Replica
	st *replica.MemStorage
}

func newNode(id byte, clock *hlc.ManualClock) *node {
	st := replica.NewMemStorage()
	r := replica.New(replica.Config{
		ID: uuid.UUID{id}, NS: "shop", Role: replica.RoleRegion,
		Clock: hlc.NewClock(clock.Now, 0), Storage: st,
	})
	return &node{r, st}
}

func (n *node) flush(peers ...*node) {
	for n.r.HasReady() {
		rd := n.r.Ready()
		n.st.Save(&rd) // 1. persist
		n.r.Advance()
		for _, m := range rd.Messages { // 2. only then send
			for _, p := range peers {
				if m.To == uuid.Nil || m.To == p.r.ID() {
					_ = p.r.Step(m)
				}
			}
		}
	}
}

func Example() {
	clock := hlc.NewManualClock(1_700_000_000_000)
	nyc, london := newNode(1, clock), newNode(2, clock)
	title := func(v string) []resolver.Op {
		return []resolver.Op{{Coll: "users", Doc: "u1", Field: "title", Op: crdt.OpSet, Value: []byte(v)}}
	}
	// Both regions take a write to the same field while apart.
	nyc.r.Write(title(`"Senior Engineer"`))
	clock.Advance(1)
	london.r.Write(title(`"Staff Engineer"`))
	// Then they talk: each flush persists and delivers until quiet.
	for i := 0; i < 3; i++ {
		nyc.flush(london)
		london.flush(nyc)
	}
	for _, n := range []*node{nyc, london} {
		fs, _ := n.r.Doc(crdt.DocKey{NS: "shop", Coll: "users", Doc: "u1"})
		v := resolver.Render("u1", fs, nil)
		fmt.Printf("%s conflicts=%d\n", v.Fields["title"], len(v.Conflicts["title"]))
	}
	// Output:
	// "Staff Engineer" conflicts=1
	// "Staff Engineer" conflicts=1
}
