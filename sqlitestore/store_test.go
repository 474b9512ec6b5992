package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/replica"
	"github.com/syncd/syncd/resolver"
)

func openTest(t testing.TB, opts Options) *Store {
	t.Helper()
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "data", "syncd.db"), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// integrityOK opens its own connection, as an operator's sqlite3 would.
func integrityOK(t *testing.T, path string) {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var res string
	if err := db.QueryRow("PRAGMA integrity_check").Scan(&res); err != nil {
		t.Fatal(err)
	}
	if res != "ok" {
		t.Fatalf("integrity_check: %s", res)
	}
}

func count(t *testing.T, s *Store, table string) int {
	t.Helper()
	var n int
	if err := s.r.QueryRow("SELECT count(*) FROM " + table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func save(t testing.TB, s *Store, rds ...*replica.Ready) {
	t.Helper()
	if err := s.Save(context.Background(), rds); err != nil {
		t.Fatal(err)
	}
}

// sampleReady is one Ready touching every table of namespace ns.
func sampleReady(ns string, seq uint64) *replica.Ready {
	c := own(regA, seq, "d"+fmt.Sprint(seq), "f", `1`)
	c.NS = ns
	d := mkChange(device, seq, uuid.Nil, 0, "items", "x", "f", crdt.OpSet, crdt.KindLWW, `2`)
	d.NS = ns
	ups := fieldsOf(c)
	ups[0].Key.NS = ns
	return &replica.Ready{NS: ns, Log: []crdt.Change{c, d}, Fields: ups, Outbox: []crdt.Change{d},
		State: &replica.State{Vector: crdt.Vector{regA: seq}, Seq: seq, HLC: c.HLC}}
}

func TestReopenRestoresState(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a?b#c d", "syncd.db") // URI metacharacters in the path
	s, err := Open(context.Background(), path, Options{KeepLog: true})
	if err != nil {
		t.Fatal(err)
	}
	id := s.ReplicaID()
	if id == uuid.Nil {
		t.Fatal("no replica id")
	}
	save(t, s, sampleReady("one", 3), sampleReady("two", 9))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("database not at the path given: %v", err)
	}

	s, err = Open(context.Background(), path, Options{KeepLog: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.ReplicaID() != id {
		t.Fatalf("replica id changed across reopen: %s then %s", id, s.ReplicaID())
	}
	nss, err := s.Namespaces(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "namespaces", nss, []string{"one", "two"})
	hw, err := s.NodeState(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := ts0 + 9; hw != want {
		t.Fatalf("NodeState = %s, want %s (the max over namespaces)", hw, want)
	}
	st, outbox, err := s.Load(context.Background(), "one")
	if err != nil {
		t.Fatal(err)
	}
	want := sampleReady("one", 3)
	mustEqual(t, "state", st, *want.State)
	mustEqual(t, "outbox", outbox, want.Outbox)
	st, outbox, err = s.Load(context.Background(), "never")
	if err != nil || st.Vector == nil || len(st.Vector) != 0 || st.Seq != 0 || st.HLC != 0 || len(outbox) != 0 {
		t.Fatalf("Load of an unknown namespace: %+v %v %v", st, outbox, err)
	}
	integrityOK(t, path)
}

// TestStateNeverGoesBack: a stale State (lower seq or clock) does not
// lower what is stored.
func TestStateNeverGoesBack(t *testing.T) {
	s := openTest(t, Options{KeepLog: true})
	save(t, s, &replica.Ready{NS: "ns", State: &replica.State{Vector: crdt.Vector{regA: 5}, Seq: 5, HLC: ts0 + 50}})
	save(t, s, &replica.Ready{NS: "ns", State: &replica.State{Vector: crdt.Vector{regA: 5, regB: 1}, Seq: 4, HLC: ts0 + 40}})
	st, _, err := s.Load(context.Background(), "ns")
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "state", st, replica.State{Vector: crdt.Vector{regA: 5, regB: 1}, Seq: 5, HLC: ts0 + 50})
}

// TestReplicaRestartNeverReuses runs a real replica on the store, closes
// it, moves the physical clock back an hour, reopens, and writes again:
// the new change's sequence number and stamp are above every earlier one.
func TestReplicaRestartNeverReuses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "syncd.db")
	phys := hlc.NewManualClock(1_700_000_000_000)
	type run struct {
		s *Store
		r *replica.Replica
	}
	start := func() run {
		s, err := Open(context.Background(), path, Options{KeepLog: true})
		if err != nil {
			t.Fatal(err)
		}
		hw, err := s.NodeState(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		clock := hlc.NewClock(phys.Now, 0)
		clock.Restore(hw)
		st, outbox, err := s.Load(context.Background(), "ns")
		if err != nil {
			t.Fatal(err)
		}
		r := replica.New(replica.Config{ID: s.ReplicaID(), NS: "ns", Role: replica.RoleRegion, Clock: clock,
			Storage: s.Storage("ns"), State: st, Outbox: outbox})
		return run{s, r}
	}
	write := func(x run, v string) crdt.Change {
		cs, err := x.r.Write([]resolver.Op{{Coll: "c", Doc: "d", Field: "f", Op: crdt.OpSet, Value: []byte(v)}})
		if err != nil {
			t.Fatal(err)
		}
		rd := x.r.Ready()
		save(t, x.s, &rd)
		x.r.Advance()
		return cs[0]
	}
	x := start()
	var last crdt.Change
	for i := range 5 {
		last = write(x, fmt.Sprint(i))
		phys.Advance(time.Millisecond)
	}
	id := x.s.ReplicaID()
	if err := x.s.Close(); err != nil {
		t.Fatal(err)
	}
	phys.Advance(-time.Hour)

	x = start()
	defer x.s.Close()
	if x.s.ReplicaID() != id {
		t.Fatal("replica id changed")
	}
	next := write(x, `"after restart"`)
	if next.Seq != last.Seq+1 {
		t.Fatalf("seq after restart = %d, want %d", next.Seq, last.Seq+1)
	}
	if next.HLC <= last.HLC {
		t.Fatalf("clock went back across a restart: %s after %s", next.HLC, last.HLC)
	}
	// The new write superseded the old one: the replica read the stored
	// state back through Storage.
	f, err := x.s.Storage("ns").Field(next.Key())
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Reg().Sibs) != 1 || string(f.Reg().Sibs[0].Value) != `"after restart"` {
		t.Fatalf("field after restart: %+v", f.Reg().Sibs)
	}
}

func TestSaveAllOrNothing(t *testing.T) {
	bad := func() *replica.Ready {
		rd := sampleReady("two", 1)
		rd.Fields[0].Key.Doc = "" // refused by the key check, after its log rows went in
		return rd
	}
	for _, tc := range []struct {
		name string
		run  func(s *Store) error
	}{
		{"bad key", func(s *Store) error {
			return s.Save(context.Background(), []*replica.Ready{sampleReady("one", 1), bad()})
		}},
		{"sql constraint", func(s *Store) error {
			// A constraint SQLite itself enforces, failing on the second
			// Ready's field row after the first Ready is written.
			s.mu.Lock()
			err := s.w.exec(`CREATE TEMP TRIGGER refuse BEFORE INSERT ON main.fields
				WHEN NEW.k LIKE 'two %' BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END`)
			s.mu.Unlock()
			if err != nil {
				return fmt.Errorf("setup: %w", err)
			}
			return s.Save(context.Background(), []*replica.Ready{sampleReady("one", 1), sampleReady("two", 1)})
		}},
		{"cancelled before", func(s *Store) error {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return s.Save(ctx, []*replica.Ready{sampleReady("one", 1), sampleReady("two", 1)})
		}},
		{"cancelled midway", func(s *Store) error {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			s.fail = func(step string) error {
				if step == "outbox" {
					cancel() // after the first Ready is written
				}
				return nil
			}
			return s.Save(ctx, []*replica.Ready{sampleReady("one", 1), sampleReady("two", 1)})
		}},
		{"cancelled at commit", func(s *Store) error {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			s.fail = func(step string) error {
				if step == "commit" {
					cancel()
				}
				return nil
			}
			return s.Save(ctx, []*replica.Ready{sampleReady("one", 1), sampleReady("two", 1)})
		}},
		{"fault in field", func(s *Store) error {
			s.fail = func(step string) error {
				if step == "field" {
					return errors.New("injected")
				}
				return nil
			}
			return s.Save(context.Background(), []*replica.Ready{sampleReady("one", 1)})
		}},
		{"namespace mismatch", func(s *Store) error {
			rd := sampleReady("one", 1)
			rd.Log[1].NS = "other"
			return s.Save(context.Background(), []*replica.Ready{rd})
		}},
		{"bad namespace", func(s *Store) error {
			return s.Save(context.Background(), []*replica.Ready{sampleReady("one", 1), sampleReady("no/slash", 1)})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openTest(t, Options{KeepLog: true})
			save(t, s, sampleReady("zero", 1)) // a committed round before
			before := map[string]int{}
			tables := []string{"ns_state", "streams", "log", "dots", "fields", "outbox"}
			for _, tb := range tables {
				before[tb] = count(t, s, tb)
			}
			err := tc.run(s)
			if err == nil {
				t.Fatal("Save succeeded")
			}
			t.Log(err)
			s.fail = nil
			for _, tb := range tables {
				if n := count(t, s, tb); n != before[tb] {
					t.Errorf("%s: %d rows after a failed Save, %d before", tb, n, before[tb])
				}
			}
			// The store goes on: the next round commits.
			save(t, s, sampleReady("one", 2))
			if nss, _ := s.Namespaces(context.Background()); len(nss) != 2 {
				t.Fatalf("namespaces after recovery: %v", nss)
			}
			// A log stream the failed transaction made is made again.
			if cs, err := s.Storage("one").Log(regA, 1, 10); err != nil || len(cs) != 1 || cs[0].RSeq != 2 {
				t.Fatalf("log after recovery: %v, %v", cs, err)
			}
			if cs, err := s.Storage("zero").Log(regA, 1, 10); err != nil || len(cs) != 1 || cs[0].RSeq != 1 {
				t.Fatalf("log of the round before: %v, %v", cs, err)
			}
			integrityOK(t, s.Path())
		})
	}
}

func TestSaveIsCancelledNotBroken(t *testing.T) {
	s := openTest(t, Options{KeepLog: true})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := s.Save(ctx, []*replica.Ready{sampleReady("one", 1)})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestOptions(t *testing.T) {
	if _, err := Open(context.Background(), filepath.Join(t.TempDir(), "x.db"), Options{Durability: "sometimes"}); err == nil {
		t.Fatal("bad durability accepted")
	}
	for _, tc := range []struct {
		dur  string
		want int64
	}{{"", 1}, {"normal", 1}, {"full", 2}, {"FULL", 2}} {
		s := openTest(t, Options{Durability: tc.dur})
		var got int64
		s.mu.Lock()
		err := s.w.query("PRAGMA synchronous", func(row []driverValue) error { got, _ = row[0].(int64); return nil })
		s.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		if got != tc.want {
			t.Errorf("durability %q: synchronous = %d, want %d", tc.dur, got, tc.want)
		}
		var mode string
		if err := s.r.QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
			t.Errorf("journal_mode = %q, %v", mode, err)
		}
	}
}

func TestRefusesNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	s, err := Open(context.Background(), path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	err = s.w.exec("PRAGMA user_version = 99")
	s.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := Open(context.Background(), path, Options{}); !errors.Is(err, ErrNewerStore) {
		t.Fatalf("open of a newer schema: %v, want ErrNewerStore", err)
	}
}

func TestClosed(t *testing.T) {
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "x.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := s.Save(context.Background(), []*replica.Ready{sampleReady("a", 1)}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Save after Close: %v", err)
	}
	if _, err := s.Storage("a").HasDot(crdt.Dot{Replica: regA, Seq: 1}); !errors.Is(err, ErrClosed) {
		t.Fatalf("HasDot after Close: %v", err)
	}
}

// TestDeviceWithoutLog: with KeepLog off, no payloads are kept, but every
// dot is, so a change that comes back is still recognised.
func TestDeviceWithoutLog(t *testing.T) {
	s := openTest(t, Options{KeepLog: false})
	rd := sampleReady("ns", 4)
	save(t, s, rd)
	if n := count(t, s, "log"); n != 0 {
		t.Fatalf("%d log rows with KeepLog off", n)
	}
	st := s.Storage("ns")
	for _, c := range rd.Log {
		if ok, err := st.HasDot(c.Dot()); err != nil || !ok {
			t.Fatalf("HasDot(%v) = %v, %v", c.Dot(), ok, err)
		}
	}
	if cs, err := st.Log(regA, 1, 10); err != nil || len(cs) != 0 {
		t.Fatalf("Log with KeepLog off: %v, %v", cs, err)
	}
}

func TestGetDocAndListDocs(t *testing.T) {
	s := openTest(t, Options{KeepLog: true})
	var cs []crdt.Change
	for i := 1; i <= 30; i++ {
		cs = append(cs, own(regA, uint64(i), fmt.Sprintf("doc%02d", i), "f", fmt.Sprint(i)))
		cs = append(cs, own(regA, uint64(100+i), fmt.Sprintf("doc%02d", i), "g", `"x"`))
	}
	other := mkChange(regA, 500, regA, 500, "other", "doc00", "f", crdt.OpSet, crdt.KindLWW, `0`)
	ups := fieldsOf(append(cs, other)...)
	save(t, s, &replica.Ready{NS: confNS, Log: cs, Fields: ups})
	ctx := context.Background()

	fs, err := s.GetDoc(ctx, crdt.DocKey{NS: confNS, Coll: "items", Doc: "doc07"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]*crdt.Field{}
	for _, u := range ups {
		if u.Key.Doc == "doc07" && u.Key.Coll == "items" {
			want[u.Key.Field] = u.State
		}
	}
	mustEqual(t, "GetDoc", fs, want)
	if fs, err := s.GetDoc(ctx, crdt.DocKey{NS: confNS, Coll: "items", Doc: "nope"}); err != nil || fs != nil {
		t.Fatalf("GetDoc of a missing doc: %v, %v", fs, err)
	}

	var got []string
	after := ""
	for page := 0; ; page++ {
		ids, err := s.ListDocs(ctx, confNS, "items", after, 7)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ids...)
		if len(ids) < 7 {
			break
		}
		after = ids[len(ids)-1]
		if page > 10 {
			t.Fatal("paging does not end")
		}
	}
	if len(got) != 30 || got[0] != "doc01" || got[29] != "doc30" {
		t.Fatalf("listed %d docs: %v", len(got), got)
	}
	for i := 1; i < len(got); i++ {
		if got[i] <= got[i-1] {
			t.Fatalf("list not in id order: %v", got)
		}
	}
	if ids, _ := s.ListDocs(ctx, confNS, "other", "", 10); len(ids) != 1 {
		t.Fatalf("other collection: %v", ids)
	}
}

func TestConflictDocs(t *testing.T) {
	s := openTest(t, Options{KeepLog: true})
	ctx := context.Background()
	var cs []crdt.Change
	// Conflicts: docs c0..c4 in coll "a", c5..c9 in coll "b" (two
	// concurrent writers each); n0..n9 have a single writer.
	for i := range 10 {
		coll := "a"
		if i >= 5 {
			coll = "b"
		}
		doc := fmt.Sprint("c", i)
		cs = append(cs,
			mkChange(regA, uint64(i+1), regA, uint64(i+1), coll, doc, "title", crdt.OpSet, crdt.KindManual, `"x"`),
			mkChange(regB, uint64(i+1), regB, uint64(i+1), coll, doc, "title", crdt.OpSet, crdt.KindManual, `"y"`),
			mkChange(regA, uint64(100+i), regA, uint64(100+i), coll, doc, "other", crdt.OpSet, crdt.KindLWW, `1`),
			mkChange(regA, uint64(200+i), regA, uint64(200+i), coll, fmt.Sprint("n", i), "title", crdt.OpSet, crdt.KindManual, `"z"`),
		)
	}
	save(t, s, &replica.Ready{NS: confNS, Fields: fieldsOf(cs...)})
	var got []string
	after := ""
	for {
		ks, err := s.ConflictDocs(ctx, confNS, after, 3)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range ks {
			got = append(got, k.Coll+"/"+k.Doc)
		}
		if len(ks) < 3 {
			break
		}
		after = ks[len(ks)-1].Coll + "/" + ks[len(ks)-1].Doc
	}
	mustEqual(t, "conflicted docs", got, []string{"a/c0", "a/c1", "a/c2", "a/c3", "a/c4", "b/c5", "b/c6", "b/c7", "b/c8", "b/c9"})
	if ks, _ := s.ConflictDocs(ctx, "elsewhere", "", 10); len(ks) != 0 {
		t.Fatalf("other namespace: %v", ks)
	}

	// Resolving c1 (a write that saw both siblings) takes it out.
	var title []crdt.Change
	for _, c := range cs {
		if c.Doc == "c1" && c.Field == "title" {
			title = append(title, c)
		}
	}
	res := mkChange(regA, 900, regA, 900, "a", "c1", "title", crdt.OpResolve, crdt.KindManual, `"x"`, title[0].Dot(), title[1].Dot())
	save(t, s, &replica.Ready{NS: confNS, Fields: fieldsOf(append(title, res)...)})
	ks, err := s.ConflictDocs(ctx, confNS, "a/c0", 2)
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "after resolve", ks, []crdt.DocKey{{NS: confNS, Coll: "a", Doc: "c2"}, {NS: confNS, Coll: "a", Doc: "c3"}})
}

// TestConflictDocsUsesIndex: the inbox reads the partial index, not the
// whole fields table.
func TestConflictDocsUsesIndex(t *testing.T) {
	s := openTest(t, Options{})
	rows, err := s.r.Query("EXPLAIN QUERY PLAN "+qConflicts, "ns ", "ns!")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, notused int
		var detail string
		if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, detail)
	}
	p := strings.Join(plan, "; ")
	if !strings.Contains(p, "SEARCH fields USING COVERING INDEX fields_conflicts") {
		t.Fatalf("conflict query plan does not use the partial index: %s", p)
	}
}

// TestReadsDoNotWaitForWriter: with a Save holding the write lock, HTTP
// reads still answer, from the last commit.
func TestReadsDoNotWaitForWriter(t *testing.T) {
	s := openTest(t, Options{KeepLog: true})
	save(t, s, sampleReady("ns", 1))
	inTx, release := make(chan struct{}), make(chan struct{})
	s.fail = func(step string) error {
		if step == "commit" {
			close(inTx)
			<-release
		}
		return nil
	}
	done := make(chan error, 1)
	go func() { done <- s.Save(context.Background(), []*replica.Ready{sampleReady("ns", 2)}) }()
	<-inTx
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	fs, err := s.GetDoc(ctx, crdt.DocKey{NS: "ns", Coll: "items", Doc: "d1"})
	if err != nil || len(fs) != 1 {
		t.Fatalf("read during a write: %v, %v", fs, err)
	}
	if fs, err := s.GetDoc(ctx, crdt.DocKey{NS: "ns", Coll: "items", Doc: "d2"}); err != nil || fs != nil {
		t.Fatalf("read saw an uncommitted write: %v, %v", fs, err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	s.fail = nil
	if fs, err := s.GetDoc(ctx, crdt.DocKey{NS: "ns", Coll: "items", Doc: "d2"}); err != nil || len(fs) != 1 {
		t.Fatalf("read after commit: %v, %v", fs, err)
	}
}

// TestCorruptRowIsAnError: a damaged state blob is reported, not a panic.
func TestCorruptRowIsAnError(t *testing.T) {
	s := openTest(t, Options{KeepLog: true})
	save(t, s, sampleReady("ns", 1))
	s.mu.Lock()
	err := s.w.exec("UPDATE fields SET state = x'01ff'")
	s.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	k := crdt.FieldKey{NS: "ns", Coll: "items", Doc: "d1", Field: "f"}
	if _, err := s.Storage("ns").Field(k); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Field of a corrupt row: %v", err)
	}
	if _, err := s.GetDoc(context.Background(), k.DocKey()); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("GetDoc of a corrupt row: %v", err)
	}
}

// TestDerivedState: a region's own writes skip the state row (their log
// rows imply it); whatever mix of own writes, remote batches and device
// pushes came before, a reopened store gives back exactly the last State
// the replica saved.
func TestDerivedState(t *testing.T) {
	path := filepath.Join(t.TempDir(), "syncd.db")
	s, err := Open(context.Background(), path, Options{KeepLog: true})
	if err != nil {
		t.Fatal(err)
	}
	phys := hlc.NewManualClock(1_700_000_000_000)
	mkRep := func(id uuid.UUID, role replica.Role, st replica.Storage) *replica.Replica {
		return replica.New(replica.Config{ID: id, NS: "ns", Role: role, Clock: hlc.NewClock(phys.Now, time.Hour), Storage: st,
			State: replica.State{Vector: crdt.Vector{}}})
	}
	a := mkRep(s.ReplicaID(), replica.RoleRegion, s.Storage("ns"))
	bst, dst := replica.NewMemStorage(), replica.NewMemStorage()
	b := mkRep(regB, replica.RoleRegion, bst)
	d := mkRep(device, replica.RoleDevice, dst)

	var last replica.State
	var failNext bool
	flushA := func() []replica.Message {
		var out []replica.Message
		for a.HasReady() {
			rd := a.Ready()
			if failNext {
				// A failed save: the replica must stop, but the store's
				// cache must not have moved.
				failNext = false
				s.fail = func(step string) error {
					if step == "commit" {
						return errors.New("injected")
					}
					return nil
				}
				if err := s.Save(context.Background(), []*replica.Ready{&rd}); err == nil {
					t.Fatal("injected failure did not fail")
				}
				s.fail = nil
				if st, _, err := s.Load(context.Background(), "ns"); err != nil || !reflect.DeepEqual(st, last) {
					t.Fatalf("Load after a failed save: %+v, %v; want %+v", st, err, last)
				}
			}
			save(t, s, &rd)
			a.Advance()
			if rd.State != nil {
				last = *rd.State
			}
			out = append(out, rd.Messages...)
		}
		return out
	}
	flushMem := func(r *replica.Replica, st *replica.MemStorage) []replica.Message {
		var out []replica.Message
		for r.HasReady() {
			rd := r.Ready()
			st.Save(&rd)
			r.Advance()
			out = append(out, rd.Messages...)
		}
		return out
	}
	write := func(r *replica.Replica, v string) {
		phys.Advance(time.Millisecond)
		if _, err := r.Write([]resolver.Op{{Coll: "c", Doc: "d" + v, Field: "f", Op: crdt.OpSet, Value: []byte(v)}}); err != nil {
			t.Fatal(err)
		}
	}
	deliver := func(to *replica.Replica, ms []replica.Message) {
		for _, m := range ms {
			if m.To == uuid.Nil || m.To == to.ID() {
				_ = to.Step(m)
			}
		}
	}
	rowSeq := func() int64 {
		var n int64
		if err := s.r.QueryRow("SELECT seq FROM ns_state WHERE ns = 'ns'").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	for i := range 3 {
		write(a, fmt.Sprint(i))
		flushA()
	}
	if rowSeq() != 1 || last.Seq != 3 {
		t.Fatalf("own writes wrote the state row: row seq %d, state seq %d", rowSeq(), last.Seq)
	}
	write(b, "10")
	write(b, "11")
	deliver(a, flushMem(b, bst)) // a remote batch: the state row is written
	flushA()
	failNext = true
	write(a, "20")
	flushA()
	write(a, "21")
	flushA()
	d.Connect(s.ReplicaID(), nil)
	phys.Advance(-10 * time.Millisecond) // the device's clock is behind
	write(d, "30")
	write(d, "31")
	deliver(a, flushMem(d, dst)) // a push: a stamps the device's changes
	flushA()
	write(a, "40")
	flushA()
	if int64(last.Seq) == rowSeq() {
		t.Fatal("test does not exercise a skipped state row at the end")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(context.Background(), path, Options{KeepLog: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, _, err := s.Load(context.Background(), "ns")
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "state after reopen", got, last)
	if last.Vector[regB] != 2 || last.Seq != 8 {
		t.Fatalf("test did not run as planned: %+v", last)
	}
	hw, err := s.NodeState(context.Background())
	if err != nil || hw != last.HLC {
		t.Fatalf("NodeState = %s, %v; want %s", hw, err, last.HLC)
	}
	integrityOK(t, path)
}

// TestReadersSeeWholeSaves: while Saves rewrite two fields of a document
// together, readers on the pool only ever see both old or both new.
func TestReadersSeeWholeSaves(t *testing.T) {
	s := openTest(t, Options{KeepLog: true})
	ctx := context.Background()
	k := crdt.DocKey{NS: "ns", Coll: "items", Doc: "d"}
	done := make(chan struct{})
	errs := make(chan error, 4)
	for range 3 {
		go func() {
			for {
				select {
				case <-done:
					errs <- nil
					return
				default:
				}
				fs, err := s.GetDoc(ctx, k)
				if err != nil {
					errs <- err
					return
				}
				if fs != nil && !reflect.DeepEqual(fs["a"].Reg().Sibs[0].Value, fs["b"].Reg().Sibs[0].Value) {
					errs <- fmt.Errorf("torn read: a=%s b=%s", fs["a"].Reg().Sibs[0].Value, fs["b"].Reg().Sibs[0].Value)
					return
				}
				if _, err := s.ConflictDocs(ctx, "ns", "", 10); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for i := uint64(1); i <= 300; i++ {
		a := mkChange(regA, 2*i-1, regA, 2*i-1, "items", "d", "a", crdt.OpSet, crdt.KindLWW, fmt.Sprint(i))
		b := mkChange(regA, 2*i, regA, 2*i, "items", "d", "b", crdt.OpSet, crdt.KindLWW, fmt.Sprint(i))
		a.NS, b.NS = "ns", "ns"
		ups := fieldsOf(a, b)
		for j := range ups {
			ups[j].Key.NS = "ns"
		}
		save(t, s, &replica.Ready{NS: "ns", Log: []crdt.Change{a, b}, Fields: ups,
			State: &replica.State{Vector: crdt.Vector{regA: 2 * i}, Seq: 2 * i, HLC: b.HLC}})
		if _, err := s.Storage("ns").Doc(k); err != nil { // the loop's own reads interleave too
			t.Fatal(err)
		}
	}
	close(done)
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// The loop reads a document whole before writing it and its field reads
// are answered from that read: a Save must drop it, or the next round
// would merge into state the store no longer holds.
func TestStorageDocReadsSeeEverySave(t *testing.T) {
	s := openTest(t, Options{KeepLog: true})
	st := s.Storage(confNS)
	dk := crdt.DocKey{NS: confNS, Coll: "items", Doc: "d1"}
	fk := crdt.FieldKey{NS: confNS, Coll: "items", Doc: "d1", Field: "f"}
	if fs, err := st.Doc(dk); err != nil || fs != nil {
		t.Fatalf("doc before any save: %v, %v", fs, err)
	}
	if f, err := st.Field(fk); err != nil || f != nil {
		t.Fatalf("field before any save: %v, %v", f, err)
	}
	for i := uint64(1); i <= 2; i++ {
		c := own(regA, i, "d1", "f", fmt.Sprint(i))
		ups := fieldsOf(c)
		save(t, s, &replica.Ready{NS: confNS, Log: []crdt.Change{c}, Fields: ups})
		if f, err := st.Field(fk); err != nil || f == nil || f.Last != ups[0].State.Last {
			t.Fatalf("field after save %d: %+v, %v", i, f, err)
		}
		fs, err := st.Doc(dk)
		if err != nil {
			t.Fatal(err)
		}
		mustEqual(t, fmt.Sprintf("doc after save %d", i), fs, map[string]*crdt.Field{"f": ups[0].State})
	}
}

// Storage reads leave a deferred transaction open that the next Save
// continues: a Save that fails must end it, the next one must still
// commit, what it commits must be visible to the read pool, and a store
// closed after reads but before a Save must close cleanly.
func TestReadsThenSave(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{KeepLog: true})
	st := s.Storage(confNS)
	fk := crdt.FieldKey{NS: confNS, Coll: "items", Doc: "d1", Field: "f"}
	c := own(regA, 1, "d1", "f", `1`)
	rd := &replica.Ready{NS: confNS, Log: []crdt.Change{c}, Fields: fieldsOf(c),
		State: &replica.State{Vector: crdt.Vector{regA: 1}, Seq: 1, HLC: c.HLC}}

	if _, err := st.Field(fk); err != nil {
		t.Fatal(err)
	}
	s.fail = func(step string) error {
		if step == "log" {
			return errors.New("injected")
		}
		return nil
	}
	if err := s.Save(ctx, []*replica.Ready{rd}); err == nil {
		t.Fatal("save with an injected failure succeeded")
	}
	s.fail = nil
	if _, err := st.Field(fk); err != nil {
		t.Fatal(err)
	}
	save(t, s, rd)
	fs, err := s.GetDoc(ctx, crdt.DocKey{NS: confNS, Coll: "items", Doc: "d1"})
	if err != nil || fs["f"] == nil {
		t.Fatalf("read pool after save: %v, %v", fs, err)
	}
	if _, err := st.Doc(crdt.DocKey{NS: confNS, Coll: "items", Doc: "d2"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("close after reads without a save: %v", err)
	}
}
