package node_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
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
	"github.com/syncd/syncd/sqlitestore"
)

// memStore adapts replica.MemStorage to node.Store: the loop's contract
// (persist, then answer) is the same whatever the store. The loop reads
// and saves without the lock (it is the only writer); the test's own
// reads (read) take it, as Save does.
type memStore struct {
	mu  sync.Mutex
	nss map[string]*replica.MemStorage
}

// get returns ns's storage, made on first use. Caller holds mu.
func (m *memStore) get(ns string) *replica.MemStorage {
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

// read runs fn on ns's storage under the lock, from the test goroutine
// while the node's loop may be saving.
func (m *memStore) read(ns string, fn func(s *replica.MemStorage)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	fn(m.get(ns))
}

func (m *memStore) Load(_ context.Context, ns string) (st replica.State, outbox []crdt.Change, err error) {
	m.read(ns, func(s *replica.MemStorage) { st, outbox = s.State, s.Outbox })
	return st, outbox, nil
}

func (m *memStore) Storage(ns string) (st replica.Storage) {
	m.read(ns, func(s *replica.MemStorage) { st = s })
	return st
}

func (m *memStore) Save(_ context.Context, rds []*replica.Ready) error {
	m.mu.Lock()
	defer m.mu.Unlock()
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
	var fs map[string]*crdt.Field
	b.st.read("shop", func(s *replica.MemStorage) { fs, _ = s.Doc(crdt.DocKey{NS: "shop", Coll: "users", Doc: "u1"}) })
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
	var got uint64
	a.st.read("shop", func(s *replica.MemStorage) { got = s.State.Seq })
	if got != 64 {
		t.Fatalf("store holds seq %d after 64 acknowledged writes", got)
	}
}

// A rendered write answers with the document right after it: fields
// written before (read from the store), its own field, and, under group
// commit, never a field some later writer of the same round set.
func TestWriteRendersDocument(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := sqlitestore.Open(ctx, filepath.Join(t.TempDir(), "syncd.db"), sqlitestore.Options{KeepLog: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	n := node.New(node.Config{ID: st.ReplicaID(), Name: "nyc", Role: replica.RoleRegion, Store: st,
		Clock: hlc.NewClock(func() int64 { return time.Now().UnixMilli() }, 0)})
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	defer func() { cancel(); <-done }()

	set := func(field, v string) []resolver.Op {
		return []resolver.Op{{Coll: "c", Doc: "d", Field: field, Op: crdt.OpSet, Value: []byte(v)}}
	}
	if _, err := n.Write(ctx, "shop", set("base", `"b"`), node.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	const writers = 32
	views := make([]resolver.View, writers)
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := n.Write(ctx, "shop", set(fmt.Sprintf("f%02d", i), fmt.Sprint(i)), node.WriteOptions{Render: true})
			if err != nil {
				errs <- err
				return
			}
			views[i] = res.View
			if own := res.Changes[0].HLC; res.View.Version != own {
				errs <- fmt.Errorf("writer %d: view at version %s, its own change is %s", i, res.View.Version, own)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	final, err := st.GetDoc(ctx, crdt.DocKey{NS: "shop", Coll: "c", Doc: "d"})
	if err != nil {
		t.Fatal(err)
	}
	all := resolver.Render("d", final, nil)
	for i, v := range views {
		if v.ID != "d" || string(v.Fields["base"]) != `"b"` || string(v.Fields[fmt.Sprintf("f%02d", i)]) != fmt.Sprint(i) {
			t.Fatalf("writer %d was answered %+v", i, v.Fields)
		}
		// The view's version is the writer's own change (checked above), so
		// no later writer of its round shows in it; what it shows is what
		// the store holds.
		for f := range v.Fields {
			if string(all.Fields[f]) != string(v.Fields[f]) {
				t.Fatalf("writer %d shows %s=%s, the store holds %s", i, f, v.Fields[f], all.Fields[f])
			}
		}
	}
	// Ops on two documents cannot be rendered as one.
	two := append(set("x", "1"), resolver.Op{Coll: "c", Doc: "e", Field: "x", Op: crdt.OpSet, Value: []byte("1")})
	if _, err := n.Write(ctx, "shop", two, node.WriteOptions{Render: true}); !errors.Is(err, crdt.ErrInvalid) {
		t.Fatalf("rendered write over two documents: %v", err)
	}
}

// Tokens are the vector's JSON as encoding/json writes it, so tokens
// issued before and after the hand-written encoder are the same string.
func TestEncodeTokenIsJSON(t *testing.T) {
	for n := range 6 {
		v := crdt.Vector{}
		for i := range n {
			v[uuid.New()] = uint64(i) * 1e15
		}
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		want := "v1." + base64.RawURLEncoding.EncodeToString(b)
		if got := node.EncodeToken(v); got != want {
			t.Fatalf("%d regions: token %s, encoding/json gives %s", n, got, want)
		}
		back, err := node.ParseToken(want)
		if err != nil || len(back) != n {
			t.Fatalf("parse: %v, %v", back, err)
		}
	}
}
