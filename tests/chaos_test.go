package tests

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/syncd/syncd/clientsdk"
)

// TestChaos runs three regions (processes bridged by NATS routes) and
// three SDK devices through a seeded random history: writes of every
// kind over HTTP and on devices, online and offline, to a few documents
// (so they conflict), while regions are isolated and healed, killed
// with SIGKILL and restarted, and devices closed and reopened. Then
// everything heals, and every region and every device must show the
// same documents, and each counter must hold every increment that was
// acknowledged and none twice. The simulator proves the replica core;
// this is the same claim made of the real adapters around it (store,
// node loop, NATS, websocket, SDK).
func TestChaos(t *testing.T) {
	steps, seed := 1000, uint64(1)
	if testing.Short() {
		steps = 120
	}
	if s, err := strconv.ParseUint(os.Getenv("SYNCD_CHAOS_SEED"), 10, 64); err == nil {
		seed = s
	}
	if n, err := strconv.Atoi(os.Getenv("SYNCD_CHAOS_STEPS")); err == nil {
		steps = n
	}
	rng := rand.New(rand.NewPCG(seed, 7))
	t.Logf("seed %d, %d steps (SYNCD_CHAOS_SEED, SYNCD_CHAOS_STEPS)", seed, steps)

	dir := t.TempDir()
	const n = 3
	var cports, hports []int
	for i := 0; i < n; i++ {
		cports, hports = append(cports, freePort(t)), append(hports, freePort(t))
	}
	c := &cluster{t: t, ports: cports}
	for i := 0; i < n; i++ {
		// A fixed HTTP port, so that devices find a region again after
		// it restarts.
		c.procs = append(c.procs, startRegion(t, regionNames[i], filepath.Join(dir, regionNames[i]),
			"--cluster-port", strconv.Itoa(cports[i]), "--routes", c.routes(i),
			"--http", fmt.Sprintf("127.0.0.1:%d", hports[i])))
	}
	if r := c.procs[0].do("PUT", "/v1/schema/shop/carts",
		`{"fields":{"items":"orset","stock":"counter","title":"manual"}}`); r.Status != 200 {
		t.Fatalf("schema: %d %s", r.Status, r.Body)
	}
	// Every region knows the schema before anyone counts (an incr on a
	// field a region still takes for lww is rightly refused).
	c.converged("/v1/schema/shop/carts", 30*time.Second)

	type device struct {
		dir  string
		urls []string
		c    *clientsdk.Client // nil while closed
	}
	devs := make([]*device, 3)
	for i := range devs {
		d := &device{dir: t.TempDir()}
		for j := 0; j < n; j++ { // each prefers another region
			d.urls = append(d.urls, wsURL(c.procs[(i+j)%n]))
		}
		d.c = openDevice(t, d.dir, d.urls...)
		syncDevice(t, d.c, 30*time.Second) // the schema, before counting
		devs[i] = d
	}

	docs := []string{"c0", "c1", "c2", "c3"}
	// The sum of acknowledged increments and of all tried (positive, so
	// the count lies between the two).
	var ackedSum, triedSum int64
	down := make([]bool, n)
	isolated := make([]bool, n)
	ctx := context.Background()
	// Meanwhile a writer counts over HTTP without pause, so that kills
	// and isolations land in the middle of writes; a write to a region
	// that is down fails, and counts as tried. Any answer but 200 is a
	// failure, as in the steps below.
	var bgAcked, bgTried atomic.Int64
	var bgBad atomic.Value // the first answer that was not 200
	bgCtx, stopBG := context.WithCancel(ctx)
	bgDone := make(chan struct{})
	t.Cleanup(func() { stopBG(); <-bgDone })
	go func() {
		defer close(bgDone)
		r := rand.New(rand.NewPCG(seed, 9))
		for bgCtx.Err() == nil {
			d := int64(1 + r.IntN(5))
			bgTried.Add(d)
			u := fmt.Sprintf("http://127.0.0.1:%d/v1/docs/shop/carts/stock/ops", hports[r.IntN(n)])
			body := fmt.Sprintf(`{"ops":[{"field":"stock","op":"incr","value":%d}]}`, d)
			resp, err := client.Post(u, "application/json", strings.NewReader(body))
			if err != nil {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			b, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			switch {
			case rerr != nil: // cut off mid-answer: not acknowledged
			case resp.StatusCode == 200:
				bgAcked.Add(d)
			default:
				bgBad.CompareAndSwap(nil, fmt.Sprintf("%s: %d %s", u, resp.StatusCode, b))
			}
		}
	}()
	var httpWrites, devWrites, isolations, kills, closes int
	for s := 0; s < steps; s++ {
		doc := docs[rng.IntN(len(docs))]
		switch k := rng.IntN(100); {
		case k < 40: // an HTTP write to a region
			i := rng.IntN(n)
			p := c.procs[i]
			if down[i] {
				continue
			}
			var r response
			var err error
			path := "/v1/docs/shop/carts/" + doc
			switch rng.IntN(6) {
			case 4:
				r, err = p.try("DELETE", path, nil)
			case 5:
				r, err = p.try("POST", path+"/resolve", fmt.Sprintf(`{"field":"title","value":"r%d"}`, s))
			case 0:
				r, err = p.try("PATCH", path, fmt.Sprintf(`{"title":"t%d","note":"n%d"}`, s, s))
			case 1:
				r, err = p.try("POST", path+"/ops", fmt.Sprintf(`{"ops":[{"field":"items","op":"add","value":"i%d"}]}`, rng.IntN(6)))
			case 2:
				r, err = p.try("POST", path+"/ops", fmt.Sprintf(`{"ops":[{"field":"items","op":"remove","value":"i%d"}]}`, rng.IntN(6)))
			case 3:
				// Counted on a document never deleted, so the count can be
				// checked against the increments.
				d := int64(1 + rng.IntN(5))
				triedSum += d
				r, err = p.try("POST", "/v1/docs/shop/carts/stock/ops", fmt.Sprintf(`{"ops":[{"field":"stock","op":"incr","value":%d}]}`, d))
				if err == nil && r.Status == 200 {
					ackedSum += d
				}
			}
			if err == nil && r.Status != 200 {
				t.Fatalf("step %d: %s write: %d %s", s, p.name, r.Status, r.Body)
			}
			httpWrites++
		case k < 75: // a device write, online or not
			d := devs[rng.IntN(len(devs))]
			if d.c == nil {
				continue
			}
			h := d.c.Doc("carts", doc)
			var err error
			switch rng.IntN(6) {
			case 4:
				err = h.Delete(ctx)
			case 5:
				err = h.Resolve(ctx, "title", fmt.Sprintf("dr%d", s))
			case 0:
				err = h.Set(ctx, "title", fmt.Sprintf("d%d", s))
			case 1:
				err = h.Add(ctx, "items", fmt.Sprintf("i%d", rng.IntN(6)))
			case 2:
				err = h.Set(ctx, "note", fmt.Sprintf("d%d", s))
			case 3:
				delta := int64(1 + rng.IntN(5))
				triedSum += delta
				if err = d.c.Doc("carts", "stock").Incr(ctx, "stock", delta); err == nil {
					ackedSum += delta
				}
			}
			if err != nil {
				t.Fatalf("step %d: device write: %v", s, err)
			}
			devWrites++
		case k < 82: // isolate or heal a region
			i := rng.IntN(n)
			if !down[i] {
				isolated[i] = !isolated[i]
				c.isolate(c.procs[i], isolated[i])
				isolations++
			}
		case k < 87: // kill -9 a region, or bring it back
			i := rng.IntN(n)
			if down[i] {
				c.procs[i].start()
				down[i], isolated[i] = false, false
			} else {
				c.procs[i].kill9()
				down[i] = true
				kills++
			}
		case k < 93: // close a device, or reopen it
			d := devs[rng.IntN(len(devs))]
			if d.c != nil {
				d.c.Close()
				d.c = nil
				closes++
			} else {
				d.c = openDevice(t, d.dir, d.urls...)
			}
		default:
			time.Sleep(time.Duration(rng.IntN(30)) * time.Millisecond)
		}
	}

	stopBG()
	<-bgDone
	if bad := bgBad.Load(); bad != nil {
		t.Fatalf("background write: %s", bad)
	}
	ackedSum, triedSum = ackedSum+bgAcked.Load(), triedSum+bgTried.Load()
	t.Logf("%d HTTP writes, %d device writes, %d isolations or heals, %d kills, %d devices closed; %d added to the counter by the background writer",
		httpWrites, devWrites, isolations, kills, closes, bgAcked.Load())

	// Heal everything and wait for it to settle.
	for i, p := range c.procs {
		if down[i] {
			p.start()
		} else if isolated[i] {
			c.isolate(p, false)
		}
	}
	for _, d := range devs {
		if d.c == nil {
			d.c = openDevice(t, d.dir, d.urls...)
		}
	}
	docs = append(docs, "stock")
	for _, doc := range docs {
		c.converged("/v1/docs/shop/carts/"+doc, 60*time.Second)
	}
	// Devices: their writes are in (the outbox drained), then they hold
	// what the regions hold.
	for _, d := range devs {
		syncDevice(t, d.c, 60*time.Second)
	}
	for _, doc := range docs {
		c.converged("/v1/docs/shop/carts/"+doc, 60*time.Second)
	}
	for _, d := range devs {
		syncDevice(t, d.c, 60*time.Second)
	}
	for _, doc := range docs {
		want := regionView(t, c.procs[0], "carts", doc)
		for i, d := range devs {
			if got := deviceView(t, d.c, "carts", doc); got.String() != want.String() {
				t.Errorf("device %d, %s:\n got %s\nwant %s (region)", i, doc, got, want)
			}
		}
	}
	stock, _ := regionView(t, c.procs[0], "carts", "stock").Fields["stock"].(float64)
	if v := int64(stock); v < ackedSum || v > triedSum {
		t.Errorf("stock %d; acknowledged increments sum to %d, all tried to %d", v, ackedSum, triedSum)
	}
}
