package bench

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestReplicationQuick runs every figure of `syncd bench replication`
// small, on two real `syncd serve` processes, so the command keeps
// working; it asserts only that each figure was measured.
func TestReplicationQuick(t *testing.T) {
	if testing.Short() {
		t.Skip("runs regions as processes")
	}
	checkReplication(t, ReplicationOptions{Exe: buildSyncd(t)})
}

// buildSyncd builds the syncd binary the process-based benchmarks run.
func buildSyncd(t *testing.T) string {
	t.Helper()
	exe := filepath.Join(t.TempDir(), "syncd")
	build := exec.Command("go", "build", "-o", exe, "../cmd/syncd")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		t.Fatalf("build syncd: %v", err)
	}
	return exe
}

// TestReplicationInProcess runs the same figures with both regions in
// the test process (the --in-process mode used for profiling).
func TestReplicationInProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("runs load phases")
	}
	checkReplication(t, ReplicationOptions{InProcess: true})
}

func checkReplication(t *testing.T, o ReplicationOptions) {
	t.Helper()
	o.Dir, o.Rate, o.Duration, o.CatchUp, o.Heal, o.Ops, o.Conns = t.TempDir(), 200, 500*time.Millisecond, 3000, 1000, 50, 4
	if testing.Verbose() {
		o.Progress = os.Stderr
	}
	rep, err := Replication(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	js := rep.JSON()
	for _, k := range []string{"propagation_p50_ms", "propagation_p99_ms", "raw_nats_route_p50_ms", "replication_changes_per_s",
		"source_changes_per_s", "catchup_changes_per_s", "apply_batch_per_s", "heal_converge_ms"} {
		if v, ok := js[k]; !ok || v != v || v == 0 {
			t.Errorf("%s = %v, want a measured figure", k, v)
		}
	}
	if testing.Verbose() {
		rep.Print(os.Stderr)
	}
}
