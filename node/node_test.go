package node_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/natsbus"
	"github.com/syncd/syncd/node"
	"github.com/syncd/syncd/replica"
	"github.com/syncd/syncd/resolver"
)

// memStore adapts replica.MemStorage to node.Store: the loop's contract
// (persist, then answer) is the same whatever the store.
type memStore struct {
	mu  sync.Mutex
	nss map[string]*replica.MemStorage
}

func (m *memStore) get(ns string) *replica.MemStorage {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.nss == nil {
		m.nss = map[string]*replica.MemStorage{}
	}
	s := m.nss[ns]
	if s == nil {
		s = replica.NewMemStorage()
		m.nss[ns] = s
	}
	return s
}

func (m *memStore) Load(_ context.Context, ns string) (replica.State, []crdt.Change, error) {
	s := m.get(ns)
	return s.State, s.Outbox, nil
}
func (m *memStore) Storage(ns string) replica.Storage { return m.get(ns) }
func (m *memStore) Save(_ context.Context, rds []*replica.Ready) error {
	for _, rd := range rds {
		m.get(rd.NS).Save(rd)
	}
	return nil
}

type testRegion struct {
	n   *node.Node
	st  *memStore
	bus *natsbus.Bus
}

func startRegion(t *testing.T, ctx context.Context, name string, opts natsbus.Options) *testRegion {
	t.Helper()
	id := uuid.New()
	st := &memStore{}
	n := node.New(node.Config{ID: id, Name: name, Role: replica.RoleRegion, Store: st,
		Clock: hlc.NewClock(func() int64 { return time.Now().UnixMilli() }, 0), Tick: 10 * time.Millisecond})
	opts.Name = name
	bus, err := natsbus.Start(ctx, id, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bus.Close)
	n.SetTransport(bus)
	go n.Run(ctx)
	if err := bus.Subscribe(n.Deliver); err != nil {
		t.Fatal(err)
	}
	if err := n.Open(ctx, "shop"); err != nil {
		t.Fatal(err)
	}
	return &testRegion{n, st, bus}
}

func title(v string) []resolver.Op {
	return []resolver.Op{{Coll: "users", Doc: "u1", Field: "title", Op: crdt.OpSet, Value: []byte(v)}}
}

func TestTwoRegionsOverNATS(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := startRegion(t, ctx, "nyc", natsbus.Options{Port: -1})
	b := startRegion(t, ctx, "london", natsbus.Options{URL: a.bus.ClientURL()})

	// ack=2 waits until london durably holds it.
	res, err := a.n.Write(ctx, "shop", title(`"Senior"`), node.WriteOptions{Ack: 2, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Replicated || res.Regions < 2 {
		t.Fatalf("ack=2 write not replicated: %+v", res)
	}
	// A read at london with nyc's token sees the write at once.
	if err := b.n.WaitFor(ctx, "shop", res.Token, time.Second); err != nil {
		t.Fatalf("london never reached nyc's token: %v", err)
	}
	fs, _ := b.st.get("shop").Doc(crdt.DocKey{NS: "shop", Coll: "users", Doc: "u1"})
	if v := resolver.Render("u1", fs, nil); string(v.Fields["title"]) != `"Senior"` {
		t.Fatalf("london has %s", v.Fields["title"])
	}
	// ack=3 with only two regions times out as accepted, not failed.
	res, err = a.n.Write(ctx, "shop", title(`"Staff"`), node.WriteOptions{Ack: 3, Timeout: 200 * time.Millisecond})
	if err != nil || res.Replicated {
		t.Fatalf("ack=3 of 2 regions: want replicated=false, got %+v, %v", res, err)
	}
}

func TestGroupCommitAnswersEveryWriter(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := startRegion(t, ctx, "nyc", natsbus.Options{})
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			ops := []resolver.Op{{Coll: "c", Doc: "d" + string(rune('a'+i%26)), Field: "n", Op: crdt.OpSet, Value: []byte("1")}}
			if _, err := a.n.Write(ctx, "shop", ops, node.WriteOptions{}); err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := a.st.get("shop").State.Seq; got != 64 {
		t.Fatalf("store holds seq %d after 64 acknowledged writes", got)
	}
}
