package sqlitestore

import (
	"os"
	"testing"
	"time"
)

// TestBackgroundCheckpoint: a few commits, far below the writer's own
// checkpoint threshold, reach the database file through the background
// checkpoint, while the store stays open.
func TestBackgroundCheckpoint(t *testing.T) {
	s := openTest(t, Options{KeepLog: true})
	size := func() int64 {
		fi, err := os.Stat(s.Path())
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	before := size()
	for i := uint64(1); i <= 20; i++ {
		save(t, s, sampleReady("ns", i))
	}
	// Not a timing assertion: the bound only keeps a broken checkpointer
	// from hanging the test.
	deadline := time.Now().Add(30 * time.Second)
	for size() == before {
		if time.Now().After(deadline) {
			t.Fatalf("database file still %d bytes after 20 commits: no checkpoint ran", before)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := count(t, s, "log"); n != 20 {
		t.Fatalf("log holds %d rows, want 20", n)
	}
}
