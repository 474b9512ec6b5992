package sqlitestore

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"time"

	"github.com/google/uuid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/replica"
	"github.com/syncd/syncd/resolver"
)

// The workloads below are the store's figures next to their raw SQLite
// baselines, for bench_test.go and `syncd bench local`. Each is prepared
// (inputs built, files created) before Run, so Run times only the work.
// Raw baselines use the same pragmas and the same connection path (cached
// prepared statements, BEGIN IMMEDIATE/COMMIT) as the store, so a ratio
// measures what the store adds, not a driver difference.

// Workload is a prepared benchmark: Steps transactions of PerStep
// operations (writes, or rows/changes applied) each.
type Workload struct {
	Steps, PerStep int
	run            func(ctx context.Context, from, to int) error // steps [from, to)
	close          func() error
}

// Result is a timed run.
type Result struct {
	Ops     int
	Elapsed time.Duration
}

// PerSecond is the throughput.
func (r Result) PerSecond() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Ops) / r.Elapsed.Seconds()
}

// Run does every step once and times them.
func (w *Workload) Run(ctx context.Context) (Result, error) {
	return w.RunSteps(ctx, 0, w.Steps)
}

// RunSteps does steps [from, to) and times them. Each step runs once per
// workload: a store workload's steps write distinct rows.
func (w *Workload) RunSteps(ctx context.Context, from, to int) (Result, error) {
	start := time.Now()
	err := w.run(ctx, from, to)
	return Result{Ops: (to - from) * w.PerStep, Elapsed: time.Since(start)}, err
}

// Close releases the workload's files.
func (w *Workload) Close() error { return w.close() }

// Compare runs two workloads of as many steps interleaved, in rounds
// chunks, alternating which goes first, so that both see the same machine:
// on a shared host, or with fsync latencies that drift by an order of
// magnitude over a minute, two runs one after the other do not.
func Compare(ctx context.Context, a, b *Workload, rounds int) (ra, rb Result, err error) {
	n := min(a.Steps, b.Steps)
	rounds = max(1, min(rounds, n))
	for r := range rounds {
		from, to := r*n/rounds, (r+1)*n/rounds
		first, second, rf, rs := a, b, &ra, &rb
		if r%2 == 1 {
			first, second, rf, rs = b, a, &rb, &ra
		}
		for _, x := range []struct {
			w *Workload
			r *Result
		}{{first, rf}, {second, rs}} {
			res, err := x.w.RunSteps(ctx, from, to)
			if err != nil {
				return ra, rb, err
			}
			x.r.Ops += res.Ops
			x.r.Elapsed += res.Elapsed
		}
	}
	return ra, rb, nil
}

var benchPeer = uuid.UUID{0x5e, 0xe1}

// benchDoc spreads ids over the key space as real ids do, so inserts land
// on random b-tree pages rather than always on the last one.
func benchDoc(i int) string {
	h := fnv.New64a()
	fmt.Fprint(h, i)
	return fmt.Sprintf("doc-%016x", h.Sum64())
}

// benchValue is a typical small JSON value.
func benchValue(i int) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"n":%d,"title":"Senior Engineer"}`, i)) // canonical: keys sorted
}

// benchChange is one lww write by region origin, stamped by it.
func benchChange(origin uuid.UUID, seq uint64, i int) crdt.Change {
	return crdt.Change{
		ID: uuid.NewSHA1(origin, fmt.Append(nil, seq)), Origin: origin, Seq: seq,
		HLC: hlc.Make(1_700_000_000_000+int64(seq), 0), Region: origin, RSeq: seq,
		NS: "bench", Coll: "items", Doc: benchDoc(i), Field: "title", Kind: crdt.KindLWW, Op: crdt.OpSet,
		Value: benchValue(i),
	}
}

func readyOf(cs []crdt.Change, vec crdt.Vector, seq uint64) *replica.Ready {
	rd := &replica.Ready{NS: "bench", Log: cs, Fields: make([]replica.FieldUpdate, len(cs)),
		State: &replica.State{Vector: vec, Seq: seq, HLC: cs[len(cs)-1].HLC}}
	for i := range cs {
		f := &crdt.Field{}
		f.Apply(&cs[i])
		rd.Fields[i] = replica.FieldUpdate{Key: cs[i].Key(), State: f}
	}
	return rd
}

func benchStore(ctx context.Context, dir, durability string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return Open(ctx, filepath.Join(dir, "store.db"), Options{Durability: durability, KeepLog: true})
}

// StoreWrites saves n Readys one per transaction, each a region's local
// write: one log row, one field state, the namespace state.
func StoreWrites(ctx context.Context, dir, durability string, n int) (*Workload, error) {
	s, err := benchStore(ctx, dir, durability)
	if err != nil {
		return nil, err
	}
	id := s.ReplicaID()
	rds := make([]*replica.Ready, n)
	for i := range rds {
		seq := uint64(i + 1)
		rds[i] = readyOf([]crdt.Change{benchChange(id, seq, i)}, crdt.Vector{id: seq}, seq)
	}
	return &Workload{Steps: n, PerStep: 1, close: s.Close, run: func(ctx context.Context, from, to int) error {
		for _, rd := range rds[from:to] {
			if err := s.Save(ctx, []*replica.Ready{rd}); err != nil {
				return err
			}
		}
		return nil
	}}, nil
}

// ReplicaWrites is StoreWrites end to end: a region replica turns each op
// into a change (reading the field's state through Storage), and its
// Ready is saved and advanced, one write per transaction.
func ReplicaWrites(ctx context.Context, dir, durability string, n int) (*Workload, error) {
	s, err := benchStore(ctx, dir, durability)
	if err != nil {
		return nil, err
	}
	r := replica.New(replica.Config{ID: s.ReplicaID(), NS: "bench", Role: replica.RoleRegion,
		Clock: hlc.NewClock(func() int64 { return time.Now().UnixMilli() }, 0), Storage: s.Storage("bench"),
		State: replica.State{Vector: crdt.Vector{}}})
	ops := make([][]resolver.Op, n)
	for i := range ops {
		ops[i] = []resolver.Op{{Coll: "items", Doc: benchDoc(i), Field: "title", Op: crdt.OpSet, Value: benchValue(i)}}
	}
	return &Workload{Steps: n, PerStep: 1, close: s.Close, run: func(ctx context.Context, from, to int) error {
		for _, op := range ops[from:to] {
			if _, err := r.Write(op); err != nil {
				return err
			}
			rd := r.Ready()
			if err := s.Save(ctx, []*replica.Ready{&rd}); err != nil {
				return err
			}
			r.Advance()
		}
		return nil
	}}, nil
}

// StoreApply saves batches Readys of size remote changes each (another
// region's writes, as a batch from NATS brings them), one per transaction.
func StoreApply(ctx context.Context, dir, durability string, batches, size int) (*Workload, error) {
	s, err := benchStore(ctx, dir, durability)
	if err != nil {
		return nil, err
	}
	rds := make([]*replica.Ready, batches)
	for b := range rds {
		cs := make([]crdt.Change, size)
		for j := range cs {
			i := b*size + j
			cs[j] = benchChange(benchPeer, uint64(i+1), i)
		}
		rds[b] = readyOf(cs, crdt.Vector{benchPeer: uint64((b + 1) * size)}, 0)
	}
	return &Workload{Steps: batches, PerStep: size, close: s.Close, run: func(ctx context.Context, from, to int) error {
		for _, rd := range rds[from:to] {
			if err := s.Save(ctx, []*replica.Ready{rd}); err != nil {
				return err
			}
		}
		return nil
	}}, nil
}

// ReplicaApply is StoreApply end to end: a region replica steps each batch
// message (checking each change's dot and reading its field through
// Storage, then merging), and its Ready is saved and advanced.
func ReplicaApply(ctx context.Context, dir, durability string, batches, size int) (*Workload, error) {
	s, err := benchStore(ctx, dir, durability)
	if err != nil {
		return nil, err
	}
	now := func() int64 { return 1_700_000_000_000 + int64(batches*size) + 1 }
	r := replica.New(replica.Config{ID: s.ReplicaID(), NS: "bench", Role: replica.RoleRegion,
		Clock: hlc.NewClock(now, 0), Storage: s.Storage("bench"), State: replica.State{Vector: crdt.Vector{}}})
	msgs := make([]replica.Message, batches)
	for b := range msgs {
		cs := make([]crdt.Change, size)
		for j := range cs {
			i := b*size + j
			cs[j] = benchChange(benchPeer, uint64(i+1), i)
		}
		msgs[b] = replica.Message{Type: replica.MsgBatch, NS: "bench", From: benchPeer, Changes: cs,
			Base: crdt.Vector{benchPeer: uint64(b * size)}, Head: crdt.Vector{benchPeer: uint64((b + 1) * size)}}
	}
	return &Workload{Steps: batches, PerStep: size, close: s.Close, run: func(ctx context.Context, from, to int) error {
		for _, m := range msgs[from:to] {
			if err := r.Step(m); err != nil {
				return err
			}
			rd := r.Ready()
			if err := s.Save(ctx, []*replica.Ready{&rd}); err != nil {
				return err
			}
			r.Advance()
		}
		return nil
	}}, nil
}

const (
	qRawTable  = `CREATE TABLE IF NOT EXISTS raw (k TEXT PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID`
	qRawUpsert = `INSERT INTO raw (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v`
)

// rawTxns upserts batches*size rows of a plain key/value table, size rows
// per transaction, with the store's pragmas. The value is what the store
// would write as the field's state.
func rawTxns(ctx context.Context, dir, durability string, batches, size int) (*Workload, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	wp, _, err := (&Options{Durability: durability}).pragmas()
	if err != nil {
		return nil, err
	}
	w, err := openConn(dsn(filepath.Join(dir, "raw.db"), wp))
	if err != nil {
		return nil, err
	}
	if err := w.exec(qRawTable); err != nil {
		w.close()
		return nil, err
	}
	keys := make([]string, batches*size)
	vals := make([][]byte, len(keys))
	for i := range keys {
		c := benchChange(benchPeer, uint64(i+1), i)
		f := &crdt.Field{}
		f.Apply(&c)
		keys[i], vals[i] = c.Doc, appendField(nil, f)
	}
	return &Workload{Steps: batches, PerStep: size, close: w.close, run: func(ctx context.Context, from, to int) error {
		for b := from; b < to; b++ {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := w.exec(qBegin); err != nil {
				return err
			}
			for i := b * size; i < (b+1)*size; i++ {
				if err := w.exec(qRawUpsert, keys[i], vals[i]); err != nil {
					_ = w.exec(qRollback)
					return err
				}
			}
			if err := w.exec(qCommit); err != nil {
				return err
			}
		}
		return nil
	}}, nil
}

// RawWrites is the baseline of StoreWrites: n one-row transactions.
func RawWrites(ctx context.Context, dir, durability string, n int) (*Workload, error) {
	return rawTxns(ctx, dir, durability, n, 1)
}

// RawBatches is the baseline of StoreApply: batches transactions of size
// upserted rows each.
func RawBatches(ctx context.Context, dir, durability string, batches, size int) (*Workload, error) {
	return rawTxns(ctx, dir, durability, batches, size)
}
