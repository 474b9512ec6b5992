package bench

import (
	"context"
	"testing"
)

// BenchmarkApplyBatch is the apply_batch_per_s figure as a Go benchmark,
// for profiling (go test -bench ApplyBatch -cpuprofile ...).
func BenchmarkApplyBatch(b *testing.B) {
	rate, err := applyBatches(context.Background(), b.TempDir(), max(b.N/1000, 5))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(rate, "changes/s")
}

// TestLocalQuick runs every figure of `syncd bench local` small, so the
// command keeps working; it asserts only that each figure was measured.
func TestLocalQuick(t *testing.T) {
	if testing.Short() {
		t.Skip("runs load phases")
	}
	rep, err := Local(context.Background(), LocalOptions{Writes: 300, Batches: 3, Duration: 200e6, Conns: 8})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"store_write_per_s", "raw_sqlite_txn_per_s", "http_write_per_s_c64", "http_noop_per_s_c64",
		"http_write_per_s_c64_full", "raw_sqlite_txn_full_per_s", "apply_batch_per_s", "raw_sqlite_batch_per_s", "http_get_p99_ms",
		"http_write_cpu_us_c64", "http_noop_cpu_us_c64", "http_write_commit_batch_c64"} {
		if v := rep.JSON()[k]; !(v > 0) {
			t.Errorf("%s = %v, want a measured figure", k, v)
		}
	}
}

// BenchmarkHTTPWrite is the http_write_per_s_c64 phase alone, without
// the no-op turns, for profiling (-cpuprofile; -tagfocus phase=http-normal
// keeps the server's side).
func BenchmarkHTTPWrite(b *testing.B) {
	o := LocalOptions{Duration: 3e9}
	o.defaults()
	ctx := context.Background()
	reg, stop, err := startRegion(ctx, "normal", b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer stop()
	w := newWriters("http://"+reg.Addr, o.Conns)
	if err := w.run(ctx, o.Duration); err != nil {
		b.Fatal(err)
	}
	res := w.st.result()
	b.ReportMetric(res.rate, "writes/s")
	b.ReportMetric(res.cpuUS, "cpu-µs/write")
	b.ReportMetric(0, "ns/op")
}
