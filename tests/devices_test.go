package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"

	"github.com/syncd/syncd/clientsdk"
	"github.com/syncd/syncd/hlc"
)

const (
	shopToken  = "shop-token-0123456789abcdef"
	readToken  = "shop-read-0123456789abcdef"
	otherToken = "other-token-0123456789abcdef"
)

var auth = []string{"Authorization", "Bearer " + shopToken}

// tokensFile writes a tokens file: one token that writes shop, one that
// only reads it, one for another namespace.
func tokensFile(t *testing.T) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "tokens.json")
	body := fmt.Sprintf(`{"tokens":[
		{"name":"app","token":%q,"read":["shop"],"write":["shop"]},
		{"name":"viewer","token":%q,"read":["shop"],"write":[]},
		{"name":"other","token":%q,"read":["other"],"write":["other"]}]}`, shopToken, readToken, otherToken)
	if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func wsURL(p *proc) string { return "ws://" + p.addr + "/v1/ws" }

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// openDevice opens an SDK client on dir; with no urls it stays offline.
func openDevice(t *testing.T, dir string, urls ...string) *clientsdk.Client {
	t.Helper()
	c, err := clientsdk.Open(context.Background(), clientsdk.Options{Dir: dir, URLs: urls, Namespace: "shop",
		Token: shopToken, Logger: quietLog, MinBackoff: 20 * time.Millisecond, MaxBackoff: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func syncDevice(t *testing.T, c *clientsdk.Client, within time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	if err := c.Sync(ctx); err != nil {
		t.Fatalf("sync: %v (status %+v)", err, c.Status())
	}
}

func must(t *testing.T, errs ...error) {
	t.Helper()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
}

// docView is what region and device must agree on: fields, each conflict
// version (value, writer, stamp) in order, deleted.
type docView struct {
	Fields    map[string]any      `json:"fields"`
	Conflicts map[string][]string `json:"conflicts"`
	Deleted   bool                `json:"deleted"`
}

func (v docView) String() string {
	b, _ := json.Marshal(v)
	return string(b)
}

func deviceView(t *testing.T, c *clientsdk.Client, coll, id string) docView {
	t.Helper()
	d, err := c.Doc(coll, id).Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	v := docView{Fields: d.Fields, Conflicts: map[string][]string{}, Deleted: d.Deleted}
	for f, vs := range d.Conflicts {
		for _, x := range vs {
			b, _ := json.Marshal(x.Value)
			v.Conflicts[f] = append(v.Conflicts[f], fmt.Sprintf("%s by %s at %s", b, x.Replica, x.HLC))
		}
	}
	return v
}

func regionView(t *testing.T, p *proc, coll, id string) docView {
	t.Helper()
	r := p.do("GET", "/v1/docs/shop/"+coll+"/"+id, nil, auth...)
	v := docView{Fields: map[string]any{}, Conflicts: map[string][]string{}}
	if r.Status == 404 {
		return v
	}
	if r.Status != 200 {
		t.Fatalf("%s: GET %s/%s: %d %s", p.name, coll, id, r.Status, r.Body)
	}
	if f, ok := r.JSON["fields"].(map[string]any); ok {
		v.Fields = f
	}
	v.Deleted, _ = r.JSON["deleted"].(bool)
	cs, _ := r.JSON["conflicts"].(map[string]any)
	for f, vs := range cs {
		for _, x := range vs.([]any) {
			m := x.(map[string]any)
			b, _ := json.Marshal(m["value"])
			v.Conflicts[f] = append(v.Conflicts[f], fmt.Sprintf("%s by %s at %s", b, m["replica"], m["hlc"]))
		}
	}
	return v
}

// agree fails unless the region and every device show each document alike.
func agree(t *testing.T, p *proc, coll string, ids []string, devs ...*clientsdk.Client) {
	t.Helper()
	for _, id := range ids {
		want := regionView(t, p, coll, id).String()
		for i, c := range devs {
			if got := deviceView(t, c, coll, id).String(); got != want {
				t.Fatalf("%s/%s: device %d differs from %s:\n device %s\n region %s", coll, id, i, p.name, got, want)
			}
		}
	}
}

// writeOps writes docs documents d0.. of perDoc fields f0.. each, one
// /ops request per document (f<j> of d<k> = k*perDoc+j), from workers
// goroutines.
func writeOps(t *testing.T, p *proc, coll string, docs, perDoc, workers int) {
	t.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := int(next.Add(1)) - 1; k < docs; k = int(next.Add(1)) - 1 {
				ops := make([]string, perDoc)
				for j := range ops {
					ops[j] = fmt.Sprintf(`{"field":"f%d","op":"set","value":%d}`, j, k*perDoc+j)
				}
				r, err := p.try("POST", fmt.Sprintf("/v1/docs/shop/%s/d%d/ops", coll, k), `{"ops":[`+strings.Join(ops, ",")+`]}`, auth...)
				if err == nil && r.Status != 200 {
					err = fmt.Errorf("ops: %d %s", r.Status, r.Body)
				}
				if err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

const cartSchema = `{"fields":{"items":"orset","stock":"counter","title":"manual"}}`

// TestDevicesOfflineEdits: two devices edit the same documents while
// offline, every kind, then reconnect; region and devices converge.
func TestDevicesOfflineEdits(t *testing.T) {
	p := startRegion(t, "nyc", t.TempDir(), "--tokens", tokensFile(t))
	p.do("PUT", "/v1/schema/shop/carts", cartSchema, auth...)
	p.do("PATCH", "/v1/docs/shop/carts/c1", `{"note":"base","title":"base"}`, auth...)
	p.do("POST", "/v1/docs/shop/carts/c1/ops", `{"ops":[{"field":"items","op":"add","value":"apple"},{"field":"stock","op":"incr","value":10}]}`, auth...)
	p.do("PATCH", "/v1/docs/shop/carts/c2", `{"note":"doomed"}`, auth...)
	dirA, dirB := t.TempDir(), t.TempDir()
	for _, dir := range []string{dirA, dirB} {
		c := openDevice(t, dir, wsURL(p))
		syncDevice(t, c, 20*time.Second)
		c.Close()
	}

	// Offline: no URLs at all.
	ctx := context.Background()
	a, b := openDevice(t, dirA), openDevice(t, dirB)
	a1, b1 := a.Doc("carts", "c1"), b.Doc("carts", "c1")
	must(t,
		a1.Set(ctx, "note", "from a"), a1.Set(ctx, "title", "A's title"),
		a1.Add(ctx, "items", "pear"), a1.Remove(ctx, "items", "apple"), a1.Incr(ctx, "stock", -2),
		a.Doc("carts", "c2").Delete(ctx), a.Doc("carts", "c3").Set(ctx, "by", "a"))
	time.Sleep(2 * time.Millisecond) // b's writes are the later ones
	must(t,
		b1.Set(ctx, "note", "from b"), b1.Set(ctx, "title", "B's title"),
		b1.Add(ctx, "items", "plum"), b1.Add(ctx, "items", "apple"), b1.Incr(ctx, "stock", -3),
		b.Doc("carts", "c3").Set(ctx, "by", "b"), b.Doc("carts", "c3").Incr(ctx, "stock", 1))
	if st := a.Status(); st.Connected || st.Pending != 7 {
		t.Fatalf("a offline: %+v", st)
	}
	a.Close()
	b.Close()

	a, b = openDevice(t, dirA, wsURL(p)), openDevice(t, dirB, wsURL(p))
	syncDevice(t, a, 20*time.Second)
	syncDevice(t, b, 20*time.Second)
	syncDevice(t, a, 20*time.Second) // b's writes reached the region after a's first sync
	agree(t, p, "carts", []string{"c1", "c2", "c3"}, a, b)

	c1 := regionView(t, p, "carts", "c1")
	// The cart: a's remove took out the apple it had seen; b's
	// concurrent re-add of apple survives (add wins).
	if got := fmt.Sprintf("%v %v %v", c1.Fields["items"], c1.Fields["stock"], c1.Fields["note"]); got != "[apple pear plum] 5 from b" {
		t.Fatalf("c1: %s (%s)", got, c1)
	}
	if len(c1.Conflicts["title"]) != 2 || len(c1.Conflicts["note"]) != 1 {
		t.Fatalf("manual title keeps both versions, lww note keeps a's as history: %s", c1)
	}
	if c2 := regionView(t, p, "carts", "c2"); !c2.Deleted {
		t.Fatalf("c2 not deleted: %s", c2)
	}

	// One device resolves; the other sees it.
	must(t, a.Doc("carts", "c1").Resolve(ctx, "title", "agreed"))
	syncDevice(t, a, 20*time.Second)
	syncDevice(t, b, 20*time.Second)
	agree(t, p, "carts", []string{"c1"}, a, b)
	if v := deviceView(t, b, "carts", "c1"); v.Fields["title"] != "agreed" || len(v.Conflicts["title"]) != 0 {
		t.Fatalf("after resolve: %s", v)
	}
}

// TestDeviceCatchUpAcrossRegionRestart: the region is killed while a
// fresh device is half way through catching up; the device carries on
// from where it was once the region is back.
func TestDeviceCatchUpAcrossRegionRestart(t *testing.T) {
	port := freePort(t)
	p := startRegion(t, "nyc", t.TempDir(), "--tokens", tokensFile(t), "--http", fmt.Sprintf("127.0.0.1:%d", port))
	const n, perDoc = 30000, 100
	writeOps(t, p, "docs", n/perDoc, perDoc, 4)

	c := openDevice(t, t.TempDir(), wsURL(p))
	watch, err := c.Watch(context.Background(), "docs")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-watch:
	case <-time.After(30 * time.Second):
		t.Fatal("catch-up did not start")
	}
	p.kill9()
	seen := 1
	for len(watch) > 0 {
		<-watch
		seen++
	}
	if seen >= n {
		t.Fatalf("the device caught up before the region died (%d changes): nothing tested", seen)
	}
	if st := c.Status(); st.Synced {
		t.Fatalf("synced with a dead region: %+v", st)
	}
	p.start()
	syncDevice(t, c, 40*time.Second)
	var ids []string
	for i := 0; i < n/perDoc; i++ {
		ids = append(ids, fmt.Sprintf("d%d", i))
	}
	agree(t, p, "docs", ids, c)
	if v := deviceView(t, c, "docs", "d7"); len(v.Fields) != perDoc {
		t.Fatalf("d7 has %d fields, want %d", len(v.Fields), perDoc)
	}
	t.Logf("region killed after the device had applied %d of %d changes", seen, n)
}

// TestDeviceFailover: a device writing to one region fails over to the
// other when it dies; once the first is back, both regions and the device
// hold every write exactly once.
func TestDeviceFailover(t *testing.T) {
	cl := startCluster(t, 2)
	nyc, london := cl.procs[0], cl.procs[1]
	nyc.do("PUT", "/v1/schema/shop/carts", cartSchema)
	eventually(t, 20*time.Second, func() error {
		if r := london.do("GET", "/v1/schema/shop/carts", nil); !strings.Contains(string(r.Body), "orset") {
			return fmt.Errorf("london lacks the schema")
		}
		return nil
	})
	c := openDevice(t, t.TempDir(), wsURL(nyc), wsURL(london))
	syncDevice(t, c, 20*time.Second)
	if st := c.Status(); st.Region != "nyc" {
		t.Fatalf("the device should prefer the first URL: %+v", st)
	}
	ctx := context.Background()
	doc := c.Doc("carts", "c1")
	const total = 400
	for i := 0; i < total; i++ {
		if i == total/4 {
			nyc.kill9()
		}
		must(t, doc.Incr(ctx, "stock", 1), doc.Add(ctx, "items", i))
		if i%20 == 0 {
			time.Sleep(5 * time.Millisecond) // let some pushes land on each side of the kill
		}
	}
	syncDevice(t, c, 30*time.Second)
	if st := c.Status(); st.Region != "london" || st.Pending != 0 {
		t.Fatalf("after failover: %+v", st)
	}
	nyc.start()
	r := cl.converged("/v1/docs/shop/carts/c1", 30*time.Second)
	syncDevice(t, c, 30*time.Second)
	var items []any
	_ = json.Unmarshal([]byte(field(r, "items")), &items)
	if field(r, "stock") != fmt.Sprint(total) || len(items) != total {
		t.Fatalf("want stock %d and %d items everywhere, got stock %s, %d items", total, total, field(r, "stock"), len(items))
	}
	// The device agrees with both regions (it follows london now).
	for _, p := range cl.procs {
		want := regionView(t, p, "carts", "c1").String()
		if got := deviceView(t, c, "carts", "c1").String(); got != want {
			t.Fatalf("device and %s differ:\n%s\n%s", p.name, got, want)
		}
	}
}

// TestDeviceCatchUp100k: a device offline while 100,000 changes are
// written catches up on all of them.
func TestDeviceCatchUp100k(t *testing.T) {
	p := startRegion(t, "nyc", t.TempDir(), "--tokens", tokensFile(t))
	dir := t.TempDir()
	c := openDevice(t, dir, wsURL(p))
	syncDevice(t, c, 20*time.Second)
	c.Close()

	const n, perDoc = 100_000, 500
	start := time.Now()
	writeOps(t, p, "docs", n/perDoc, perDoc, 4)
	t.Logf("wrote %d changes in %v", n, time.Since(start))

	start = time.Now()
	c = openDevice(t, dir, wsURL(p))
	syncDevice(t, c, 50*time.Second)
	t.Logf("caught up in %v", time.Since(start))
	for i := 0; i < n/perDoc; i++ {
		v := deviceView(t, c, "docs", fmt.Sprintf("d%d", i))
		if len(v.Fields) != perDoc || v.Fields["f7"] != float64(i*perDoc+7) {
			t.Fatalf("d%d: %d fields, f7 = %v", i, len(v.Fields), v.Fields["f7"])
		}
	}
	agree(t, p, "docs", []string{"d0", "d100", "d199"}, c)
}

// raw is a websocket client speaking the protocol by hand, as a client in
// another language would.
type raw struct {
	t  *testing.T
	c  *websocket.Conn
	id uuid.UUID
	in chan map[string]any // frames read, decoded
}

func dialRaw(ctx context.Context, p *proc, hdr http.Header, protos ...string) (*websocket.Conn, *http.Response, error) {
	return websocket.Dial(ctx, wsURL(p), &websocket.DialOptions{HTTPHeader: hdr, Subprotocols: protos})
}

func bearer(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }

// helloRaw sends a hello, with any extra fields, and returns the first
// frame the region answers, or the close error.
func helloRaw(ctx context.Context, c *websocket.Conn, ns string, id uuid.UUID, extra map[string]any) (map[string]any, error) {
	h := map[string]any{"type": "hello", "version": 1, "ns": ns, "replica": id, "vector": map[string]any{}}
	for k, v := range extra {
		h[k] = v
	}
	b, _ := json.Marshal(h)
	if err := c.Write(ctx, websocket.MessageText, b); err != nil {
		return nil, err
	}
	_, data, err := c.Read(ctx)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	return m, json.Unmarshal(data, &m)
}

// connectRaw dials with the shop token, says hello following colls (none:
// all) and starts reading.
func connectRaw(t *testing.T, p *proc, colls ...string) *raw {
	t.Helper()
	if len(colls) == 0 {
		return connectRawWith(t, p, nil)
	}
	return connectRawWith(t, p, map[string]any{"colls": colls})
}

// connectRawWith is connectRaw with extra fields in the hello.
func connectRawWith(t *testing.T, p *proc, hello map[string]any) *raw {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, _, err := dialRaw(ctx, p, bearer(shopToken), "syncd.v1")
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadLimit(64 << 20)
	r := &raw{t: t, c: c, id: uuid.New(), in: make(chan map[string]any, 100_000)}
	w, err := helloRaw(ctx, c, "shop", r.id, hello)
	if err != nil || w["type"] != "welcome" {
		t.Fatalf("hello: %v %v", w, err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return r
}

func (r *raw) readAll() {
	go func() {
		defer close(r.in)
		for {
			_, data, err := r.c.Read(context.Background())
			if err != nil {
				return
			}
			var m map[string]any
			if json.Unmarshal(data, &m) == nil {
				r.in <- m
			}
		}
	}()
}

func (r *raw) send(m any) {
	r.t.Helper()
	b, _ := json.Marshal(m)
	if err := r.c.Write(context.Background(), websocket.MessageText, b); err != nil {
		r.t.Fatal(err)
	}
}

// next waits for a frame of the given type.
func (r *raw) next(typ string) map[string]any {
	r.t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case m, ok := <-r.in:
			if !ok {
				r.t.Fatalf("connection closed while waiting for %s", typ)
			}
			if m["type"] == typ {
				return m
			}
		case <-timeout:
			r.t.Fatalf("no %s frame", typ)
		}
	}
}

func change(origin uuid.UUID, seq int, doc, field, value string) map[string]any {
	return map[string]any{
		"id": uuid.New(), "origin": origin, "seq": seq, "hlc": hlc.Make(time.Now().UnixMilli(), 0),
		"region": uuid.Nil, "rseq": 0, "ns": "shop", "coll": "notes", "doc": doc, "field": field,
		"kind": "lww", "op": "set", "value": json.RawMessage(value),
	}
}

// TestDeviceRefusals: no token, a wrong token, another namespace's token,
// a foreign Origin, a read-only token's push, a forged replica id, a
// region's id, an oversized message: each is refused and applies nothing.
func TestDeviceRefusals(t *testing.T) {
	p := startRegion(t, "nyc", t.TempDir(), "--tokens", tokensFile(t), "--allowed-origins", "app.example.com")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	t.Run("no token", func(t *testing.T) {
		_, resp, err := dialRaw(ctx, p, nil, "syncd.v1")
		if err == nil || resp == nil || resp.StatusCode != 401 {
			t.Fatalf("want 401, got %v %v", resp, err)
		}
	})
	t.Run("wrong token", func(t *testing.T) {
		_, resp, err := dialRaw(ctx, p, bearer("not-a-token-0123456789"), "syncd.v1")
		if err == nil || resp == nil || resp.StatusCode != 401 {
			t.Fatalf("want 401, got %v %v", resp, err)
		}
		_, resp, err = dialRaw(ctx, p, nil, "syncd.v1", "syncd.token.not-a-token-0123456789")
		if err == nil || resp == nil || resp.StatusCode != 401 {
			t.Fatalf("subprotocol: want 401, got %v %v", resp, err)
		}
	})
	t.Run("sdk with a wrong token", func(t *testing.T) {
		c, err := clientsdk.Open(ctx, clientsdk.Options{Dir: t.TempDir(), URLs: []string{wsURL(p)}, Namespace: "shop",
			Token: "not-a-token-0123456789", Logger: quietLog, MinBackoff: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		eventually(t, 10*time.Second, func() error {
			if st := c.Status(); st.Connected || !strings.Contains(st.LastError, "401") {
				return fmt.Errorf("status %+v", st)
			}
			return nil
		})
	})
	t.Run("another namespace", func(t *testing.T) {
		c, _, err := dialRaw(ctx, p, bearer(otherToken), "syncd.v1")
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		_, err = helloRaw(ctx, c, "shop", uuid.New(), nil)
		if websocket.CloseStatus(err) != 4003 {
			t.Fatalf("want close 4003, got %v", err)
		}
	})
	t.Run("origins", func(t *testing.T) {
		_, resp, err := dialRaw(ctx, p, http.Header{"Origin": {"https://evil.example"}, "Authorization": {"Bearer " + shopToken}}, "syncd.v1")
		if err == nil || resp == nil || resp.StatusCode != 403 {
			t.Fatalf("foreign origin: want 403, got %v %v", resp, err)
		}
		// A browser on the allowed origin, token in the subprotocol list.
		c, resp, err := dialRaw(ctx, p, http.Header{"Origin": {"https://app.example.com"}}, "syncd.v1", "syncd.token."+shopToken)
		if err != nil {
			t.Fatalf("allowed origin refused: %v %v", resp, err)
		}
		defer c.CloseNow()
		if c.Subprotocol() != "syncd.v1" {
			t.Fatalf("subprotocol %q, want syncd.v1", c.Subprotocol())
		}
		if w, err := helloRaw(ctx, c, "shop", uuid.New(), nil); err != nil || w["type"] != "welcome" {
			t.Fatalf("hello: %v %v", w, err)
		}
	})
	t.Run("region id", func(t *testing.T) {
		st := p.do("GET", "/v1/status", nil, auth...)
		region, _ := uuid.Parse(st.JSON["replica"].(string))
		c, _, err := dialRaw(ctx, p, bearer(shopToken), "syncd.v1")
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		if _, err = helloRaw(ctx, c, "shop", region, nil); websocket.CloseStatus(err) != 4002 {
			t.Fatalf("hello under the region's id: want close 4002, got %v", err)
		}
	})
	t.Run("read-only push", func(t *testing.T) {
		c, _, err := dialRaw(ctx, p, bearer(readToken), "syncd.v1")
		if err != nil {
			t.Fatal(err)
		}
		r := &raw{t: t, c: c, id: uuid.New(), in: make(chan map[string]any, 100)}
		defer c.CloseNow()
		if w, err := helloRaw(ctx, c, "shop", r.id, nil); err != nil || w["type"] != "welcome" {
			t.Fatalf("a read token may follow: %v %v", w, err)
		}
		r.readAll()
		r.send(map[string]any{"type": "push", "changes": []any{change(r.id, 1, "ro", "x", `1`)}})
		if e := r.next("error"); e["code"] != "forbidden" {
			t.Fatalf("want forbidden, got %v", e)
		}
		if g := p.do("GET", "/v1/docs/shop/notes/ro", nil, auth...); g.Status != 404 {
			t.Fatalf("refused push applied: %d %s", g.Status, g.Body)
		}
	})
	t.Run("forged replica id", func(t *testing.T) {
		r := connectRaw(t, p)
		r.readAll()
		other := uuid.New()
		r.send(map[string]any{"type": "push", "changes": []any{
			change(r.id, 1, "f1", "x", `"mine"`), change(other, 1, "f1", "y", `"forged"`)}})
		if e := r.next("error"); e["code"] != "forged" {
			t.Fatalf("want forged, got %v", e)
		}
		if g := p.do("GET", "/v1/docs/shop/notes/f1", nil, auth...); g.Status != 404 {
			t.Fatalf("nothing of a forged push may be applied: %d %s", g.Status, g.Body)
		}
		// The same connection's honest push goes through.
		r.send(map[string]any{"type": "push", "changes": []any{change(r.id, 1, "f1", "x", `"mine"`)}})
		if a := r.next("push_ack"); len(a["dots"].([]any)) != 1 {
			t.Fatalf("ack: %v", a)
		}
		if g := p.do("GET", "/v1/docs/shop/notes/f1", nil, auth...); field(g, "x") != `"mine"` {
			t.Fatalf("honest push: %d %s", g.Status, g.Body)
		}
	})
	t.Run("message too big", func(t *testing.T) {
		r := connectRaw(t, p)
		big := `"` + strings.Repeat("x", 5<<20) + `"`
		_ = r.c.Write(ctx, websocket.MessageText, []byte(`{"type":"push","changes":[{"value":`+big+`}]}`))
		for {
			if _, _, err := r.c.Read(ctx); err != nil {
				if websocket.CloseStatus(err) != websocket.StatusMessageTooBig {
					t.Fatalf("want close 1009, got %v", err)
				}
				break
			}
		}
	})
}

// TestSlowDeviceCut: a device that never reads is cut off (the region
// holds a bounded queue for it, then closes it) while 100 others keep
// receiving every change.
func TestSlowDeviceCut(t *testing.T) {
	p := startRegion(t, "nyc", t.TempDir(), "--tokens", tokensFile(t))
	p.do("PATCH", "/v1/docs/shop/chat/warmup", `{"n":0}`, auth...)
	const healthy, rounds = 100, 400
	var clients []*raw
	for i := 0; i < healthy; i++ {
		r := connectRaw(t, p, "chat")
		r.readAll()
		clients = append(clients, r)
	}
	connectRaw(t, p) // follows everything, reads nothing
	clientsNow := func() int {
		return int(p.do("GET", "/v1/status", nil, auth...).JSON["clients"].(float64))
	}
	if n := clientsNow(); n != healthy+1 {
		t.Fatalf("%d clients connected, want %d", n, healthy+1)
	}

	// Big changes nobody but the slow device follows fill its socket and
	// then its queue; small chat changes go to everyone.
	blob := strings.Repeat("b", 50_000)
	ops := `{"ops":[{"field":"v","op":"set","value":"` + blob + `"}]}`
	for i := 0; i < rounds; i++ {
		if r := p.do("POST", fmt.Sprintf("/v1/docs/shop/blobs/b%d/ops", i%10), ops, auth...); r.Status != 200 {
			t.Fatalf("blob write: %d %s", r.Status, r.Body)
		}
		p.do("PATCH", "/v1/docs/shop/chat/m"+fmt.Sprint(i), fmt.Sprintf(`{"n":%d}`, i), auth...)
	}
	eventually(t, 30*time.Second, func() error {
		if n := clientsNow(); n != healthy {
			return fmt.Errorf("%d clients connected, want the slow one cut (%d)", n, healthy)
		}
		return nil
	})
	if !strings.Contains(p.Logs(), "send queue full") {
		t.Fatalf("the region should say why it cut the device:\n%s", p.Logs())
	}

	// Every healthy client received every chat change, live.
	for i, r := range clients {
		got := map[string]bool{}
		eventually(t, 30*time.Second, func() error {
			for {
				select {
				case m, ok := <-r.in:
					if !ok {
						return fmt.Errorf("client %d was disconnected", i)
					}
					cs, _ := m["changes"].([]any)
					for _, c := range cs {
						c := c.(map[string]any)
						if c["coll"] == "chat" {
							got[c["doc"].(string)] = true
						}
						if c["coll"] == "blobs" {
							return fmt.Errorf("client %d follows chat only but got a blob", i)
						}
					}
					continue
				default:
				}
				if len(got) < rounds+1 {
					return fmt.Errorf("client %d has %d of %d chat changes", i, len(got), rounds+1)
				}
				return nil
			}
		})
	}
}

// TestDeviceSyncReqNumbers: the region echoes a sync request's number on
// the page answering it, the hello's included, so a device can tell an
// answer to its connection before from one to its own (docs/protocol.md
// §4); a request without one gets a page without one.
func TestDeviceSyncReqNumbers(t *testing.T) {
	p := startRegion(t, "nyc", t.TempDir(), "--tokens", tokensFile(t))
	p.do("PATCH", "/v1/docs/shop/notes/n1", `{"title":"a"}`, auth...)
	r := connectRawWith(t, p, map[string]any{"req": 41})
	r.readAll()
	page := func() map[string]any {
		for {
			if m := r.next("batch"); m["sync"] == true {
				return m
			}
		}
	}
	if m := page(); m["req"] != float64(41) || len(m["changes"].([]any)) == 0 {
		t.Fatalf("the hello's page: req %v, %d changes; want req 41 and the region's changes", m["req"], len(m["changes"].([]any)))
	}
	r.send(map[string]any{"type": "sync_req", "vector": map[string]any{}, "req": uint64(1) << 62})
	if m := page(); m["req"] != float64(uint64(1)<<62) {
		t.Fatalf("the page answering request 2^62 says req %v", m["req"])
	}
	r.send(map[string]any{"type": "sync_req", "vector": map[string]any{}})
	if m := page(); m["req"] != nil {
		t.Fatalf("the page answering an unnumbered request says req %v", m["req"])
	}
}
