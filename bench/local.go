package bench

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/uuid"
	_ "modernc.org/sqlite"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/daemon"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/replica"
	"github.com/syncd/syncd/resolver"
	"github.com/syncd/syncd/sqlitestore"
)

// LocalOptions size `syncd bench local`.
type LocalOptions struct {
	Dir       string        // scratch space (default a temp dir, removed after)
	Writes    int           // single-writer transactions per side (default 20,000)
	Duration  time.Duration // per HTTP load phase (default 3s)
	Batches   int           // 1,000-change batches applied per side (default 100)
	RSSDocs   int           // documents for the RSS figure (default 1,000,000; 0 skips)
	Exe       string        // the syncd binary for the RSS figure (default this executable)
	Progress  io.Writer     // progress lines (nil: none)
	Conns     int           // concurrent HTTP writers (default 64)
	Rounds    int           // turns each figure and its baseline take (default 6)
	SkipFull  bool
	SkipHTTP  bool
	SkipApply bool
}

func (o *LocalOptions) defaults() {
	if o.Writes <= 0 {
		o.Writes = 20000
	}
	if o.Duration <= 0 {
		o.Duration = 3 * time.Second
	}
	if o.Batches <= 0 {
		o.Batches = 100
	}
	if o.Conns <= 0 {
		o.Conns = 64
	}
	if o.Rounds <= 0 {
		o.Rounds = 6
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
}

// Local runs the single-region figures of issue 3.
func Local(ctx context.Context, o LocalOptions) (*Report, error) {
	o.defaults()
	cleanup, err := scratch(&o.Dir, "syncd-bench-")
	if err != nil {
		return nil, err
	}
	defer cleanup()
	rep := &Report{Name: "local"}
	say := func(f string, a ...any) { fmt.Fprintf(o.Progress, f+"\n", a...) }

	say("store writes through the replica and sqlitestore, and raw one-row SQLite transactions, in turns...")
	store, raw, err := storeVsRaw(ctx, o)
	if err != nil {
		return nil, err
	}
	rep.add("raw_sqlite_txn_per_s", "raw one-row transactions, synchronous=NORMAL", raw, "txn/s")
	rep.vs("store_write_per_s", "durable single-writer writes through the store", store, "write/s", "raw_sqlite_txn_per_s", ">= 0.5x")

	if !o.SkipHTTP {
		say("HTTP: %d concurrent writers, to a region and to a do-nothing handler in turns...", o.Conns)
		others := othersCPU()
		noop, w, g, err := httpPhases(ctx, o, filepath.Join(o.Dir, "http-normal"))
		if err != nil {
			return nil, err
		}
		if pct, ok := others(); ok {
			rep.add("cpu_others_pct_http", "share of the machine's CPU other processes took during the HTTP phases", pct, "%")
		}
		rep.add("http_noop_per_s_c64", "do-nothing Go HTTP handler, same load generator", noop.rate, "req/s")
		rep.add("http_noop_cpu_us_c64", "CPU per no-op request, server and load generator", noop.cpuUS, "µs")
		rep.vs("http_write_per_s_c64", "HTTP writes, 64 writers, group commit", w.rate, "write/s", "raw_sqlite_txn_per_s", ">= 1.5x raw, >= 0.4x noop")
		rep.vs("http_write_per_s_c64_vs_noop", "the same, against the no-op handler", w.rate, "write/s", "http_noop_per_s_c64", ">= 0.4x")
		rep.vs("http_write_cpu_us_c64", "CPU per HTTP write, server and load generator", w.cpuUS, "µs", "http_noop_cpu_us_c64", "")
		rep.add("http_write_commit_batch_c64", "changes per transaction (mean of syncd_commit_changes)", w.batch, "change")
		rep.add("http_write_save_us_c64", "time in Save per change (syncd_commit_seconds)", w.saveUS, "µs")
		rep.add("http_write_p50_ms_c64", "HTTP write latency p50", w.p50, "ms")
		rep.add("http_write_p99_ms_c64", "HTTP write latency p99", w.p99, "ms")
		rep.add("http_get_p50_ms", "HTTP point read latency p50 (16 readers)", g.p50, "ms")
		rep.add("http_get_p99_ms", "HTTP point read latency p99 (16 readers)", g.p99, "ms")
		if !o.SkipFull {
			say("HTTP: %d concurrent writers, --durability full, and raw FULL transactions, in turns...", o.Conns)
			wf, rawFull, err := httpFull(ctx, o, filepath.Join(o.Dir, "http-full"))
			if err != nil {
				return nil, err
			}
			rep.add("raw_sqlite_txn_full_per_s", "raw one-row transactions, synchronous=FULL", rawFull, "txn/s")
			rep.vs("http_write_per_s_c64_full", "HTTP writes, 64 writers, synchronous=FULL", wf.rate, "write/s", "raw_sqlite_txn_full_per_s", ">= 5x")
			rep.add("http_write_p99_ms_c64_full", "HTTP write latency p99, FULL", wf.p99, "ms")
			rep.add("http_write_commit_batch_c64_full", "changes per transaction, FULL", wf.batch, "change")
			rep.add("http_write_save_us_c64_full", "time in Save per change, FULL", wf.saveUS, "µs")
		}
	}
	if !o.SkipApply {
		say("applying 1,000-change batches from another region, and raw batched upserts, in turns...")
		ap, rawB, err := applyVsRaw(ctx, o)
		if err != nil {
			return nil, err
		}
		rep.add("raw_sqlite_batch_per_s", "raw batched upserts, 1,000-row transactions", rawB, "row/s")
		rep.vs("apply_batch_per_s", "remote changes applied in 1,000-change batches", ap, "change/s", "raw_sqlite_batch_per_s", ">= 0.5x")
	}
	if o.RSSDocs > 0 {
		say("loading %d documents for the RSS figure...", o.RSSDocs)
		rss, err := rssAfterDocs(ctx, o, filepath.Join(o.Dir, "rss"))
		if err != nil {
			return nil, err
		}
		rep.vs("rss_mb_1m_docs", fmt.Sprintf("region RSS with %d documents, after reads", o.RSSDocs), rss, "MB", "", "<= 200")
	}
	return rep, nil
}

// openRaw opens a plain SQLite database with the store's writer pragmas
// (WAL, synchronous, cache; SQLite's own checkpoint threshold).
func openRaw(path, sync string) (*sql.DB, error) {
	ps, err := sqlitestore.WriterPragmas(sync)
	if err != nil {
		return nil, err
	}
	q := make([]string, len(ps))
	for i, p := range ps {
		q[i] = "_pragma=" + url.QueryEscape(p)
	}
	db, err := sql.Open("sqlite", "file:"+path+"?"+strings.Join(q, "&"))
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	if _, err := db.Exec(`CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v BLOB) WITHOUT ROWID`); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// counted adds up the time of a repeated step across turns.
type counted struct {
	n  int
	el time.Duration
}

// run does k steps.
func (c *counted) run(k int, step func(i int) error) error {
	start := time.Now()
	defer func() { c.el += time.Since(start) }()
	for range k {
		if err := step(c.n); err != nil {
			return err
		}
		c.n++
	}
	return nil
}

// runFor does steps until d has passed.
func (c *counted) runFor(d time.Duration, step func(i int) error) error {
	start := time.Now()
	defer func() { c.el += time.Since(start) }()
	for time.Since(start) < d {
		if err := step(c.n); err != nil {
			return err
		}
		c.n++
	}
	return nil
}

func (c *counted) rate() float64 { return float64(c.n) / c.el.Seconds() }

// rawTxns is the baseline: prepared upserts into a plain SQLite table
// with the store's pragmas, in one-row transactions (step) or in
// transactions of 1,000 rows (batch).
type rawTxns struct {
	db   *sql.DB
	stmt *sql.Stmt
	val  []byte
	counted
}

func openRawTxns(path, sync string) (*rawTxns, error) {
	db, err := openRaw(path, sync)
	if err != nil {
		return nil, fmt.Errorf("raw sqlite: %w", err)
	}
	stmt, err := db.Prepare(`INSERT INTO t (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v`)
	if err != nil {
		db.Close()
		return nil, err
	}
	return &rawTxns{db: db, stmt: stmt, val: bytes.Repeat([]byte("x"), 64)}, nil
}

// step commits row i alone.
func (r *rawTxns) step(i int) error { return r.commit(i, 1) }

// batch commits rows 1,000·b to 1,000·b+999 together.
func (r *rawTxns) batch(b int) error { return r.commit(b*1000, 1000) }

func (r *rawTxns) commit(from, n int) error {
	tx, err := r.db.Begin()
	if err != nil {
		return err
	}
	ts := tx.Stmt(r.stmt)
	for i := from; i < from+n; i++ {
		if _, err := ts.Exec("k"+strconv.Itoa(i), r.val); err != nil {
			tx.Rollback()
			return err
		}
	}
	return tx.Commit()
}

func (r *rawTxns) close() { r.stmt.Close(); r.db.Close() }

func wallClock() *hlc.Clock {
	return hlc.NewClock(func() int64 { return time.Now().UnixMilli() }, 0)
}

// storeWrites: one local write per Ready, one Save per write: the whole
// durable path of a write without HTTP and without group commit.
type storeWrites struct {
	ctx context.Context
	st  *sqlitestore.Store
	r   *replica.Replica
	counted
}

func openStoreWrites(ctx context.Context, dir, durability string) (*storeWrites, error) {
	st, err := sqlitestore.Open(ctx, filepath.Join(dir, "syncd.db"), sqlitestore.Options{Durability: durability, KeepLog: true})
	if err != nil {
		return nil, err
	}
	r := replica.New(replica.Config{ID: st.ReplicaID(), NS: "bench", Role: replica.RoleRegion, Clock: wallClock(),
		Storage: st.Storage("bench"), State: replica.State{Vector: crdt.Vector{}}})
	return &storeWrites{ctx: ctx, st: st, r: r}, nil
}

func (w *storeWrites) step(i int) error {
	op := []resolver.Op{{Coll: "c", Doc: "d" + strconv.Itoa(i), Field: "v", Op: crdt.OpSet, Value: []byte(strconv.Itoa(i))}}
	if _, err := w.r.Write(op); err != nil {
		return err
	}
	rd := w.r.Ready()
	if err := w.st.Save(w.ctx, []*replica.Ready{&rd}); err != nil {
		return err
	}
	w.r.Advance()
	return nil
}

// storeVsRaw runs n store writes and n raw transactions taking turns.
func storeVsRaw(ctx context.Context, o LocalOptions) (store, raw float64, err error) {
	rt, err := openRawTxns(filepath.Join(o.Dir, "raw.db"), "NORMAL")
	if err != nil {
		return 0, 0, err
	}
	defer rt.close()
	sw, err := openStoreWrites(ctx, filepath.Join(o.Dir, "store"), "normal")
	if err != nil {
		return 0, 0, err
	}
	defer sw.st.Close()
	per := max(o.Writes/o.Rounds, 1)
	for range o.Rounds {
		if err := rt.run(per, rt.step); err != nil {
			return 0, 0, fmt.Errorf("raw sqlite: %w", err)
		}
		if err := sw.run(per, sw.step); err != nil {
			return 0, 0, fmt.Errorf("store writes: %w", err)
		}
	}
	return sw.rate(), rt.rate(), nil
}

// remoteBatch makes batch b of 1,000 lww changes from region `from` to
// distinct documents, as a live batch would carry them.
func remoteBatch(from crdt.ReplicaID, b int, clock *hlc.Clock) replica.Message {
	m := replica.Message{Type: replica.MsgBatch, NS: "bench", From: from,
		Base: crdt.Vector{from: uint64(b * 1000)}, Head: crdt.Vector{from: uint64(b*1000 + 1000)}}
	m.Changes = make([]crdt.Change, 1000)
	for i := range m.Changes {
		seq := uint64(b*1000 + i + 1)
		m.Changes[i] = crdt.Change{ID: uuid.New(), Origin: from, Seq: seq, HLC: clock.Now(), Region: from, RSeq: seq,
			NS: "bench", Coll: "c", Doc: "d" + strconv.FormatUint(seq, 10), Field: "v", Kind: crdt.KindLWW, Op: crdt.OpSet,
			Value: []byte(strconv.FormatUint(seq, 10))}
	}
	return m
}

// batchApplier steps batches of 1,000 changes from another region into
// a region and saves each: making the batch excluded, everything from
// Step to commit timed.
type batchApplier struct {
	ctx  context.Context
	st   *sqlitestore.Store
	r    *replica.Replica
	from crdt.ReplicaID
	src  *hlc.Clock
	n    int
	busy time.Duration
}

func openBatchApplier(ctx context.Context, dir string) (*batchApplier, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	st, err := sqlitestore.Open(ctx, filepath.Join(dir, "syncd.db"), sqlitestore.Options{KeepLog: true})
	if err != nil {
		return nil, err
	}
	r := replica.New(replica.Config{ID: st.ReplicaID(), NS: "bench", Role: replica.RoleRegion, Clock: wallClock(),
		Storage: st.Storage("bench"), State: replica.State{Vector: crdt.Vector{}}})
	return &batchApplier{ctx: ctx, st: st, r: r, from: uuid.New(), src: wallClock()}, nil
}

// run applies k more batches.
func (a *batchApplier) run(k int) error {
	for range k {
		m := remoteBatch(a.from, a.n, a.src)
		start := time.Now()
		if err := a.r.Step(m); err != nil {
			return fmt.Errorf("step batch %d: %w", a.n, err)
		}
		rd := a.r.Ready()
		if err := a.st.Save(a.ctx, []*replica.Ready{&rd}); err != nil {
			return err
		}
		a.r.Advance()
		a.busy += time.Since(start)
		a.n++
	}
	return nil
}

func (a *batchApplier) rate() float64 { return float64(a.n*1000) / a.busy.Seconds() }

// applyBatches applies n batches into a fresh region in dir.
func applyBatches(ctx context.Context, dir string, n int) (float64, error) {
	a, err := openBatchApplier(ctx, dir)
	if err != nil {
		return 0, err
	}
	defer a.st.Close()
	if err := a.run(n); err != nil {
		return 0, err
	}
	return a.rate(), nil
}

// applyVsRaw applies o.Batches batches and commits as many raw ones,
// taking turns (o.Rounds), so both see the same machine.
func applyVsRaw(ctx context.Context, o LocalOptions) (apply, raw float64, err error) {
	rb, err := openRawTxns(filepath.Join(o.Dir, "rawbatch.db"), "NORMAL")
	if err != nil {
		return 0, 0, err
	}
	defer rb.close()
	ba, err := openBatchApplier(ctx, filepath.Join(o.Dir, "apply"))
	if err != nil {
		return 0, 0, err
	}
	defer ba.st.Close()
	per := max(o.Batches/o.Rounds, 1)
	for range o.Rounds {
		if err := rb.run(per, rb.batch); err != nil {
			return 0, 0, fmt.Errorf("raw sqlite: %w", err)
		}
		if err := ba.run(per); err != nil {
			return 0, 0, fmt.Errorf("apply: %w", err)
		}
	}
	return ba.rate(), 1000 * rb.rate(), nil
}

type loadResult struct {
	rate     float64
	p50, p99 float64
	// cpuUS is this process's CPU time (user + system) per request: the
	// server and the load generator together. Unlike the rate it does not
	// move with what the machine's other tenants take.
	cpuUS float64
	// Regions: mean changes per commit (group commit), and the time
	// saving took per change.
	batch, saveUS float64
}

// othersCPU starts measuring how much of the machine's CPU time (steal
// included) went to other processes; the returned func reads the share
// since, in percent. On a shared machine that is what the rates of a
// phase depend on most.
func othersCPU() func() (float64, bool) {
	_, total0, ok0 := cpuSteal()
	idle0, ok1 := cpuIdle()
	own0 := processCPU()
	return func() (float64, bool) {
		_, total1, ok2 := cpuSteal()
		idle1, ok3 := cpuIdle()
		if !(ok0 && ok1 && ok2 && ok3) || total1 <= total0 {
			return 0, false
		}
		const hz = 100 // USER_HZ: /proc/stat counts in 1/100 s
		own := (processCPU() - own0).Seconds() * hz
		busy := float64(total1-total0) - float64(idle1-idle0)
		return max(0, 100*(busy-own)/float64(total1-total0)), true
	}
}

// cpuIdle reads the machine's idle and iowait time (jiffies).
func cpuIdle() (uint64, bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return 0, false
	}
	idle, err1 := strconv.ParseUint(f[4], 10, 64)
	iow, err2 := strconv.ParseUint(f[5], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return idle + iow, true
}

// processCPU returns the CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// loadStats adds up the slices of one load phase.
type loadStats struct {
	count   int64
	elapsed time.Duration
	cpu     time.Duration
	lats    latencies
}

func (s *loadStats) result() loadResult {
	n := float64(max(s.count, 1))
	return loadResult{rate: float64(s.count) / s.elapsed.Seconds(), p50: s.lats.pct(50), p99: s.lats.pct(99),
		cpuUS: float64(s.cpu.Microseconds()) / n}
}

// load runs conns workers calling do until d passes, adding to st.
func load(ctx context.Context, st *loadStats, conns int, d time.Duration, do func(worker int) error) error {
	var wg sync.WaitGroup
	var count atomic.Int64
	lats := make([]latencies, conns)
	errs := make(chan error, conns)
	deadline := time.Now().Add(d)
	start, cpu0 := time.Now(), processCPU()
	for w := 0; w < conns; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for time.Now().Before(deadline) && ctx.Err() == nil {
				t0 := time.Now()
				if err := do(w); err != nil {
					errs <- err
					return
				}
				lats[w] = append(lats[w], time.Since(t0))
				count.Add(1)
			}
		}(w)
	}
	wg.Wait()
	st.elapsed += time.Since(start)
	st.cpu += processCPU() - cpu0
	select {
	case err := <-errs:
		return err
	default:
	}
	st.count += count.Load()
	for _, l := range lats {
		st.lats = append(st.lats, l...)
	}
	return nil
}

// interleave runs each of the loads for d in all, in rounds of d/rounds
// each, taking turns: on a machine shared with other tenants, a load and
// its baseline then see the same conditions, where one after the other
// they could differ by more than what is measured.
func interleave(ctx context.Context, rounds int, d time.Duration, loads ...func(d time.Duration) error) error {
	for range rounds {
		for _, l := range loads {
			if err := l(d / time.Duration(rounds)); err != nil {
				return err
			}
		}
	}
	return nil
}

func httpClient(conns int) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		MaxIdleConns: conns * 2, MaxIdleConnsPerHost: conns * 2, MaxConnsPerHost: conns * 2, IdleConnTimeout: time.Minute,
	}}
}

func doReq(c *http.Client, method, url string, body []byte, want int) error {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want {
		return fmt.Errorf("%s %s: %s", method, url, resp.Status)
	}
	return nil
}

// noopServer is the HTTP floor: a handler that reads the body and
// answers a small JSON object. It returns its base URL and a stop func.
func noopServer() (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"id":"d","fields":{"v":1}}`))
	})}
	go srv.Serve(ln)
	return "http://" + ln.Addr().String(), func() { srv.Close() }, nil
}

// writers loads base with o.Conns concurrent writers, each PATCHing
// documents of its own, one new document per request; written counts, per
// writer, the documents acknowledged.
type writers struct {
	c       *http.Client
	base    string
	written []atomic.Int64
	st      loadStats
	conns   int
}

func newWriters(base string, conns int) *writers {
	return &writers{c: httpClient(conns), base: base, written: make([]atomic.Int64, conns), conns: conns}
}

func (w *writers) run(ctx context.Context, d time.Duration) error {
	return load(ctx, &w.st, w.conns, d, func(k int) error {
		i := w.written[k].Load()
		err := doReq(w.c, "PATCH", fmt.Sprintf("%s/v1/docs/bench/c/w%d-%d", w.base, k, i), []byte(`{"v":1}`), 200)
		if err == nil {
			w.written[k].Store(i + 1)
		}
		return err
	})
}

// startRegion runs a region in this process. Its goroutines carry the
// pprof label phase=http-<durability>, so `go tool pprof -tagfocus
// phase=http-normal` shows the server's side of that phase alone.
func startRegion(ctx context.Context, durability, dir string) (*daemon.Region, func(), error) {
	rctx, cancel := context.WithCancel(ctx)
	defer pprof.SetGoroutineLabels(ctx)
	pprof.SetGoroutineLabels(pprof.WithLabels(rctx, pprof.Labels("phase", "http-"+durability)))
	reg, err := daemon.Start(rctx, daemon.Config{Node: "bench", DataDir: dir, HTTPAddr: "127.0.0.1:0", Durability: durability,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		cancel()
		return nil, nil, err
	}
	return reg, func() { cancel(); reg.Wait() }, nil
}

// httpPhases measures the region's writes under o.Conns writers taking
// turns with the same writers against the no-op handler, then point reads
// of what was written.
func httpPhases(ctx context.Context, o LocalOptions, dir string) (noop, wr, rd loadResult, err error) {
	nbase, nstop, err := noopServer()
	if err != nil {
		return
	}
	defer nstop()
	reg, stop, err := startRegion(ctx, "normal", dir)
	if err != nil {
		return
	}
	defer stop()
	nw, rw := newWriters(nbase, o.Conns), newWriters("http://"+reg.Addr, o.Conns)
	err = interleave(ctx, o.Rounds, o.Duration,
		func(d time.Duration) error { return nw.run(ctx, d) },
		func(d time.Duration) error { return rw.run(ctx, d) })
	if err != nil {
		return
	}
	noop, wr = nw.st.result(), rw.st.result()
	if wr.batch, wr.saveUS, err = commitStats(reg); err != nil {
		return
	}
	var rs loadStats
	err = load(ctx, &rs, 16, o.Duration, func(_ int) error {
		k := rand.IntN(o.Conns)
		n := rw.written[k].Load()
		if n == 0 {
			return nil
		}
		return doReq(rw.c, "GET", fmt.Sprintf("%s/v1/docs/bench/c/w%d-%d", rw.base, k, rand.Int64N(n)), nil, 200)
	})
	return noop, wr, rs.result(), err
}

// httpFull measures writes to a region with --durability full, taking
// turns with raw one-row transactions under synchronous=FULL (its
// baseline): both wait on the same disk, whose sync time drifts.
func httpFull(ctx context.Context, o LocalOptions, dir string) (loadResult, float64, error) {
	rt, err := openRawTxns(filepath.Join(o.Dir, "rawfull.db"), "FULL")
	if err != nil {
		return loadResult{}, 0, err
	}
	defer rt.close()
	reg, stop, err := startRegion(ctx, "full", dir)
	if err != nil {
		return loadResult{}, 0, err
	}
	defer stop()
	w := newWriters("http://"+reg.Addr, o.Conns)
	err = interleave(ctx, o.Rounds, o.Duration,
		func(d time.Duration) error { return rt.runFor(d, rt.step) },
		func(d time.Duration) error { return w.run(ctx, d) })
	if err != nil {
		return loadResult{}, 0, err
	}
	res := w.st.result()
	res.batch, res.saveUS, err = commitStats(reg)
	return res, rt.rate(), err
}

// commitStats reads the region's commit histograms: changes saved per
// transaction (whether group commit batched) and the time spent saving
// per change, in µs.
func commitStats(reg *daemon.Region) (batch, usPerChange float64, err error) {
	mfs, err := reg.Registry().Gather()
	if err != nil {
		return 0, 0, fmt.Errorf("read metrics: %w", err)
	}
	var changes, commits, secs float64
	for _, mf := range mfs {
		if len(mf.GetMetric()) != 1 {
			continue
		}
		h := mf.GetMetric()[0].GetHistogram()
		switch mf.GetName() {
		case "syncd_commit_changes":
			changes, commits = h.GetSampleSum(), float64(h.GetSampleCount())
		case "syncd_commit_seconds":
			secs = h.GetSampleSum()
		}
	}
	if commits == 0 || changes == 0 {
		return 0, 0, fmt.Errorf("no commits in syncd_commit_changes")
	}
	return changes / commits, secs * 1e6 / changes, nil
}

var servingRE = regexp.MustCompile(`region serving.* http=http://([0-9.:]+)`)

// rssAfterDocs builds a region's store with RSSDocs documents (applied as
// remote batches, the fast path), then starts `syncd serve` on it as its
// own process, reads a sample of documents and reports its RSS.
func rssAfterDocs(ctx context.Context, o LocalOptions, dir string) (float64, error) {
	if _, err := applyBatches(ctx, dir, o.RSSDocs/1000); err != nil {
		return 0, err
	}
	exe := o.Exe
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return 0, err
		}
	}
	cmd := exec.CommandContext(ctx, exe, "serve", "--node", "rss", "--data", dir, "--http", "127.0.0.1:0")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := servingRE.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
	}()
	var base string
	select {
	case a := <-addr:
		base = "http://" + a
	case <-time.After(60 * time.Second):
		return 0, fmt.Errorf("rss: region did not start")
	}
	c := httpClient(4)
	for i := 0; i < 2000; i++ {
		if err := doReq(c, "GET", fmt.Sprintf("%s/v1/docs/bench/c/d%d", base, 1+rand.IntN(o.RSSDocs)), nil, 200); err != nil {
			return 0, fmt.Errorf("rss reads: %w", err)
		}
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			if err != nil {
				return 0, err
			}
			return float64(kb) / 1024, nil
		}
	}
	return 0, fmt.Errorf("rss: no VmRSS in /proc status")
}
