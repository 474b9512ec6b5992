package tests

import (
	"database/sql"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "modernc.org/sqlite"
)

// TestKill9KeepsAcknowledgedWrites kills a region with SIGKILL in the
// middle of a stream of writes, many times; after every restart each write
// it had acknowledged is there and the database passes integrity_check.
func TestKill9KeepsAcknowledgedWrites(t *testing.T) {
	kills := 20
	if testing.Short() {
		kills = 5
	}
	dir := t.TempDir()
	p := startRegion(t, "nyc", dir)
	var acked sync.Map // doc id -> value acknowledged
	var n atomic.Int64
	rng := rand.New(rand.NewPCG(1, 2))
	for k := 0; k < kills; k++ {
		// Four writers stream until the kill; whatever was answered 200 is
		// acknowledged.
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					i := n.Add(1)
					id := fmt.Sprintf("d%d", i)
					r, err := p.try("PATCH", "/v1/docs/shop/crash/"+id, fmt.Sprintf(`{"v":%d}`, i))
					if err != nil {
						return // the process died under us: not acknowledged
					}
					if r.Status == 200 {
						acked.Store(id, i)
					}
				}
			}()
		}
		time.Sleep(time.Duration(20+rng.IntN(120)) * time.Millisecond)
		p.kill9()
		close(stop)
		wg.Wait()

		checkIntegrity(t, filepath.Join(dir, "syncd.db"))
		p.start()
		missing := 0
		acked.Range(func(key, value any) bool {
			r := p.do("GET", "/v1/docs/shop/crash/"+key.(string), nil)
			if r.Status != 200 || field(r, "v") != fmt.Sprint(value) {
				missing++
				t.Errorf("kill %d: acknowledged %s=%v is %d %s", k, key, value, r.Status, r.Body)
			}
			return missing < 10
		})
		if missing > 0 {
			t.FailNow()
		}
	}
	count := 0
	acked.Range(func(any, any) bool { count++; return true })
	if count < kills*10 {
		t.Fatalf("only %d writes acknowledged across %d kills: the test did not exercise the store", count, kills)
	}
	t.Logf("%d acknowledged writes survived %d kill -9s", count, kills)
}

func checkIntegrity(t *testing.T, path string) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var res string
	if err := db.QueryRow("PRAGMA integrity_check").Scan(&res); err != nil {
		t.Fatalf("integrity_check: %v", err)
	}
	if res != "ok" {
		t.Fatalf("integrity_check: %s", res)
	}
}
