package bench

import (
	"context"
	"testing"
	"time"
)

// TestDevicesQuick runs every figure of `syncd bench devices` small
// against a freshly built syncd, so the command keeps working; it asserts
// only that each figure was measured.
func TestDevicesQuick(t *testing.T) {
	if testing.Short() {
		t.Skip("builds syncd and runs a region")
	}
	exe := buildSyncd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := Devices(ctx, DevicesOptions{Exe: exe, Dir: t.TempDir(), Rate: 200, Duration: time.Second,
		Clients: 50, Fanouts: 3, CatchUp: 5000, EchoRounds: 200})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"raw_ws_rtt_p50_ms", "device_to_device_p50_ms", "device_to_device_p99_ms",
		"fanout_p99_ms_c50", "device_catchup_changes_per_s"} {
		if v := rep.JSON()[k]; !(v > 0) {
			t.Errorf("%s = %v, want a measured figure", k, v)
		}
	}
	if _, ok := rep.JSON()["kib_per_idle_conn"]; !ok {
		t.Error("kib_per_idle_conn missing")
	}
}
