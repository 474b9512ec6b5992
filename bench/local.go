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
	if o.Progress == nil {
		o.Progress = io.Discard
	}
}

// Local runs the single-region figures of issue 3.
func Local(ctx context.Context, o LocalOptions) (*Report, error) {
	o.defaults()
	if o.Dir == "" {
		d, err := os.MkdirTemp("", "syncd-bench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		o.Dir = d
	}
	rep := &Report{Name: "local"}
	say := func(f string, a ...any) { fmt.Fprintf(o.Progress, f+"\n", a...) }

	say("raw one-row SQLite transactions (synchronous=NORMAL)...")
	raw, err := rawTxns(filepath.Join(o.Dir, "raw.db"), "NORMAL", o.Writes)
	if err != nil {
		return nil, err
	}
	say("store writes through the replica and sqlitestore...")
	store, err := storeWrites(ctx, filepath.Join(o.Dir, "store"), "normal", o.Writes)
	if err != nil {
		return nil, err
	}
	rep.add("raw_sqlite_txn_per_s", "raw one-row transactions, synchronous=NORMAL", raw, "txn/s")
	rep.vs("store_write_per_s", "durable single-writer writes through the store", store, "write/s", "raw_sqlite_txn_per_s", ">= 0.5x")

	if !o.SkipFull {
		say("raw one-row SQLite transactions (synchronous=FULL)...")
		rawFull, err := rawTxns(filepath.Join(o.Dir, "rawfull.db"), "FULL", max(o.Writes/5, 1000))
		if err != nil {
			return nil, err
		}
		rep.add("raw_sqlite_txn_full_per_s", "raw one-row transactions, synchronous=FULL", rawFull, "txn/s")
	}
	if !o.SkipHTTP {
		say("HTTP: a do-nothing handler under %d connections...", o.Conns)
		noop, err := httpNoop(ctx, o)
		if err != nil {
			return nil, err
		}
		rep.add("http_noop_per_s_c64", "do-nothing Go HTTP handler, same load generator", noop.rate, "req/s")
		rep.add("http_noop_cpu_us_c64", "CPU per no-op request, server and load generator", noop.cpuUS, "µs")
		say("HTTP: %d concurrent writers to a region...", o.Conns)
		w, g, err := httpRegion(ctx, o, "normal", filepath.Join(o.Dir, "http-normal"), true)
		if err != nil {
			return nil, err
		}
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
			say("HTTP: %d concurrent writers, --durability full...", o.Conns)
			wf, _, err := httpRegion(ctx, o, "full", filepath.Join(o.Dir, "http-full"), false)
			if err != nil {
				return nil, err
			}
			rep.vs("http_write_per_s_c64_full", "HTTP writes, 64 writers, synchronous=FULL", wf.rate, "write/s", "raw_sqlite_txn_full_per_s", ">= 5x")
			rep.add("http_write_p99_ms_c64_full", "HTTP write latency p99, FULL", wf.p99, "ms")
			rep.add("http_write_commit_batch_c64_full", "changes per transaction, FULL", wf.batch, "change")
		}
	}
	if !o.SkipApply {
		say("raw batched upserts, 1,000 rows per transaction...")
		rawB, err := rawBatches(filepath.Join(o.Dir, "rawbatch.db"), o.Batches)
		if err != nil {
			return nil, err
		}
		say("applying 1,000-change batches from another region...")
		ap, err := applyBatches(ctx, filepath.Join(o.Dir, "apply"), o.Batches)
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

func openRaw(path, sync string) (*sql.DB, error) {
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=synchronous(" + sync + ")&_pragma=busy_timeout(5000)"
	db, err := sql.Open("sqlite", dsn)
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

// rawTxns is the baseline: n one-row transactions, a prepared upsert.
func rawTxns(path, sync string, n int) (float64, error) {
	db, err := openRaw(path, sync)
	if err != nil {
		return 0, fmt.Errorf("raw sqlite: %w", err)
	}
	defer db.Close()
	stmt, err := db.Prepare(`INSERT INTO t (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v`)
	if err != nil {
		return 0, err
	}
	defer stmt.Close()
	val := bytes.Repeat([]byte("x"), 64)
	start := time.Now()
	for i := 0; i < n; i++ {
		tx, err := db.Begin()
		if err != nil {
			return 0, err
		}
		if _, err := tx.Stmt(stmt).Exec("k"+strconv.Itoa(i), val); err != nil {
			tx.Rollback()
			return 0, err
		}
		if err := tx.Commit(); err != nil {
			return 0, err
		}
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// rawBatches is the baseline for applying batches: n transactions of 1,000
// upserts each.
func rawBatches(path string, n int) (float64, error) {
	db, err := openRaw(path, "NORMAL")
	if err != nil {
		return 0, fmt.Errorf("raw sqlite: %w", err)
	}
	defer db.Close()
	stmt, err := db.Prepare(`INSERT INTO t (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v`)
	if err != nil {
		return 0, err
	}
	defer stmt.Close()
	val := bytes.Repeat([]byte("x"), 64)
	start := time.Now()
	for b := 0; b < n; b++ {
		tx, err := db.Begin()
		if err != nil {
			return 0, err
		}
		ts := tx.Stmt(stmt)
		for i := 0; i < 1000; i++ {
			if _, err := ts.Exec("k"+strconv.Itoa(b*1000+i), val); err != nil {
				tx.Rollback()
				return 0, err
			}
		}
		if err := tx.Commit(); err != nil {
			return 0, err
		}
	}
	return float64(n*1000) / time.Since(start).Seconds(), nil
}

func wallClock() *hlc.Clock {
	return hlc.NewClock(func() int64 { return time.Now().UnixMilli() }, 0)
}

// storeWrites: one local write per Ready, one Save per write: the whole
// durable path of a write without HTTP and without group commit.
func storeWrites(ctx context.Context, dir, durability string, n int) (float64, error) {
	os.MkdirAll(dir, 0o755)
	st, err := sqlitestore.Open(ctx, filepath.Join(dir, "syncd.db"), sqlitestore.Options{Durability: durability, KeepLog: true})
	if err != nil {
		return 0, err
	}
	defer st.Close()
	r := replica.New(replica.Config{ID: st.ReplicaID(), NS: "bench", Role: replica.RoleRegion, Clock: wallClock(),
		Storage: st.Storage("bench"), State: replica.State{Vector: crdt.Vector{}}})
	start := time.Now()
	for i := 0; i < n; i++ {
		op := []resolver.Op{{Coll: "c", Doc: "d" + strconv.Itoa(i), Field: "v", Op: crdt.OpSet, Value: []byte(strconv.Itoa(i))}}
		if _, err := r.Write(op); err != nil {
			return 0, err
		}
		rd := r.Ready()
		if err := st.Save(ctx, []*replica.Ready{&rd}); err != nil {
			return 0, err
		}
		r.Advance()
	}
	return float64(n) / time.Since(start).Seconds(), nil
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

// applyBatches steps n batches of 1,000 changes into a region and saves
// each: decoding excluded, everything from Step to commit included.
func applyBatches(ctx context.Context, dir string, n int) (float64, error) {
	os.MkdirAll(dir, 0o755)
	st, err := sqlitestore.Open(ctx, filepath.Join(dir, "syncd.db"), sqlitestore.Options{KeepLog: true})
	if err != nil {
		return 0, err
	}
	defer st.Close()
	clock := wallClock()
	r := replica.New(replica.Config{ID: st.ReplicaID(), NS: "bench", Role: replica.RoleRegion, Clock: clock,
		Storage: st.Storage("bench"), State: replica.State{Vector: crdt.Vector{}}})
	from := uuid.New()
	srcClock := wallClock()
	var busy time.Duration
	for b := 0; b < n; b++ {
		m := remoteBatch(from, b, srcClock)
		start := time.Now()
		if err := r.Step(m); err != nil {
			return 0, fmt.Errorf("step batch %d: %w", b, err)
		}
		rd := r.Ready()
		if err := st.Save(ctx, []*replica.Ready{&rd}); err != nil {
			return 0, err
		}
		r.Advance()
		busy += time.Since(start)
	}
	return float64(n*1000) / busy.Seconds(), nil
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

// processCPU returns the CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// load runs conns workers calling do until d passes.
func load(ctx context.Context, conns int, d time.Duration, do func(worker, i int) error) (loadResult, error) {
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
			for i := 0; time.Now().Before(deadline) && ctx.Err() == nil; i++ {
				t0 := time.Now()
				if err := do(w, i); err != nil {
					errs <- err
					return
				}
				lats[w] = append(lats[w], time.Since(t0))
				count.Add(1)
			}
		}(w)
	}
	wg.Wait()
	el, cpu := time.Since(start), processCPU()-cpu0
	select {
	case err := <-errs:
		return loadResult{}, err
	default:
	}
	var all latencies
	for _, l := range lats {
		all = append(all, l...)
	}
	n := float64(max(count.Load(), 1))
	return loadResult{rate: float64(count.Load()) / el.Seconds(), p50: all.pct(50), p99: all.pct(99),
		cpuUS: float64(cpu.Microseconds()) / n}, nil
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

// httpNoop measures the HTTP floor: a handler that reads the body and
// answers a small JSON object, under the same load generator.
func httpNoop(ctx context.Context, o LocalOptions) (loadResult, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return loadResult{}, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"id":"d","fields":{"v":1}}`))
	})}
	go srv.Serve(ln)
	defer srv.Close()
	c := httpClient(o.Conns)
	base := "http://" + ln.Addr().String()
	return load(ctx, o.Conns, o.Duration, func(w, i int) error {
		return doReq(c, "PATCH", fmt.Sprintf("%s/v1/docs/bench/c/w%d-%d", base, w, i), []byte(`{"v":1}`), 200)
	})
}

// httpRegion runs a region in this process and loads it with concurrent
// writers, then (if reads) point reads of what they wrote.
func httpRegion(ctx context.Context, o LocalOptions, durability, dir string, reads bool) (loadResult, loadResult, error) {
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The region's goroutines inherit the label: `go tool pprof -tagfocus
	// phase=http-normal` shows the server's side of this phase alone.
	defer pprof.SetGoroutineLabels(ctx)
	pprof.SetGoroutineLabels(pprof.WithLabels(ctx, pprof.Labels("phase", "http-"+durability)))
	reg, err := daemon.Start(rctx, daemon.Config{Node: "bench", DataDir: dir, HTTPAddr: "127.0.0.1:0", Durability: durability,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return loadResult{}, loadResult{}, err
	}
	defer func() { cancel(); reg.Wait() }()
	c := httpClient(o.Conns)
	base := "http://" + reg.Addr
	written := make([]atomic.Int64, o.Conns) // per writer: documents acknowledged
	wr, err := load(ctx, o.Conns, o.Duration, func(w, i int) error {
		err := doReq(c, "PATCH", fmt.Sprintf("%s/v1/docs/bench/c/w%d-%d", base, w, i), []byte(`{"v":1}`), 200)
		if err == nil {
			written[w].Store(int64(i + 1))
		}
		return err
	})
	if err != nil {
		return wr, loadResult{}, err
	}
	wr.batch, wr.saveUS, err = commitStats(reg)
	if err != nil || !reads {
		return wr, loadResult{}, err
	}
	rd, err := load(ctx, 16, o.Duration, func(_, _ int) error {
		w := rand.IntN(o.Conns)
		n := written[w].Load()
		if n == 0 {
			return nil
		}
		return doReq(c, "GET", fmt.Sprintf("%s/v1/docs/bench/c/w%d-%d", base, w, rand.Int64N(n)), nil, 200)
	})
	return wr, rd, err
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
