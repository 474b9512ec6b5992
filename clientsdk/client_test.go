package clientsdk_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/syncd/syncd/clientsdk"
	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/daemon"
	"github.com/syncd/syncd/node"
	"github.com/syncd/syncd/resolver"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// region runs one region in this process, stopped at the end of the test.
func region(t *testing.T, name string) (*daemon.Region, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r, err := daemon.Start(ctx, daemon.Config{Node: name, DataDir: filepath.Join(t.TempDir(), name),
		HTTPAddr: "127.0.0.1:0", Logger: quiet, Tick: 20 * time.Millisecond})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		r.Wait()
	})
	return r, "ws://" + r.Addr + "/v1/ws"
}

func device(t *testing.T, url string, mod ...func(*clientsdk.Options)) *clientsdk.Client {
	t.Helper()
	o := clientsdk.Options{Dir: t.TempDir(), Namespace: "shop", Logger: quiet, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
	if url != "" {
		o.URLs = []string{url}
	}
	for _, m := range mod {
		m(&o)
	}
	c, err := clientsdk.Open(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func putSchema(t *testing.T, r *daemon.Region) {
	t.Helper()
	_, err := r.Node.PutSchema(context.Background(), "shop", "carts", resolver.Schema{Fields: map[string]crdt.Kind{
		"items": crdt.KindORSet, "stock": crdt.KindCounter, "title": crdt.KindManual}}, node.WriteOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

func regionDoc(t *testing.T, r *daemon.Region, coll, id string) resolver.View {
	t.Helper()
	fs, err := r.Store.GetDoc(context.Background(), crdt.DocKey{NS: "shop", Coll: coll, Doc: id})
	if err != nil {
		t.Fatal(err)
	}
	return resolver.Render(id, fs, nil)
}

func mustGet(t *testing.T, d *clientsdk.Doc) clientsdk.Document {
	t.Helper()
	doc, err := d.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// TestOffline: Open works with no region reachable; writes are local,
// visible at once and pending.
func TestOffline(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "ws://" + l.Addr().String() + "/v1/ws"
	l.Close() // nothing listens there now
	c := device(t, url)
	ctx := ctxFor(t, 10*time.Second)
	doc := c.Doc("carts", "c1")
	if err := doc.Set(ctx, "title", "offline"); err != nil {
		t.Fatal(err)
	}
	if err := doc.Incr(ctx, "n", 2); err == nil {
		t.Fatal("incr on a field the device knows as lww must be refused")
	}
	if got := mustGet(t, doc).Fields["title"]; got != "offline" {
		t.Fatalf("title = %v", got)
	}
	st := c.Status()
	if st.Connected || st.Pending != 1 || st.Synced {
		t.Fatalf("status %+v, want offline with one pending change", st)
	}
	sctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if err := c.Sync(sctx); err == nil {
		t.Fatal("Sync must not succeed with no region")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := doc.Set(ctx, "title", "x"); err != clientsdk.ErrClosed {
		t.Fatalf("write after Close: %v, want ErrClosed", err)
	}
}

// TestTwoDevices: the schema comes from the region; every kind of write
// from two devices converges on the region and both devices; Watch sees
// local and remote changes.
func TestTwoDevices(t *testing.T) {
	r, url := region(t, "nyc")
	putSchema(t, r)
	dirB := t.TempDir()
	a, b := device(t, url), device(t, url, func(o *clientsdk.Options) { o.Dir = dirB })
	ctx := ctxFor(t, 30*time.Second)
	for _, c := range []*clientsdk.Client{a, b} {
		if err := c.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// b writes offline, so that its writes are concurrent with a's: online,
	// whichever came second would have seen the first and replaced it.
	b.Close()
	b = device(t, "", func(o *clientsdk.Options) { o.Dir = dirB })
	db := b.Doc("carts", "c1")
	for i, err := range []error{db.Set(ctx, "title", "from b"), db.Add(ctx, "items", "pear"), db.Incr(ctx, "stock", -3)} {
		if err != nil {
			t.Fatalf("b step %d: %v", i, err)
		}
	}
	b.Close()
	b = device(t, url, func(o *clientsdk.Options) { o.Dir = dirB })
	db = b.Doc("carts", "c1")
	watch, err := b.Watch(ctx, "carts")
	if err != nil {
		t.Fatal(err)
	}
	da := a.Doc("carts", "c1")
	steps := []error{
		da.Set(ctx, "title", "from a"),
		da.Add(ctx, "items", "apple"),
		da.Incr(ctx, "stock", 10),
		a.Doc("carts", "gone").Set(ctx, "x", 1),
	}
	for i, err := range steps {
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	for _, c := range []*clientsdk.Client{a, b} {
		if err := c.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Sync(ctx); err != nil { // b's writes reached the region after a's first Sync
		t.Fatal(err)
	}
	ga, gb := mustGet(t, da), mustGet(t, db)
	if !reflect.DeepEqual(ga, gb) {
		t.Fatalf("devices differ:\n%+v\n%+v", ga, gb)
	}
	if n := len(ga.Conflicts["title"]); n != 2 {
		t.Fatalf("manual title: %d versions, want both: %+v", n, ga)
	}
	if got := fmt.Sprint(ga.Fields["items"], ga.Fields["stock"]); got != "[apple pear] 7" {
		t.Fatalf("items and stock: %s", got)
	}
	rv := regionDoc(t, r, "carts", "c1")
	if string(rv.Fields["items"]) != `["apple","pear"]` || string(rv.Fields["stock"]) != "7" || len(rv.Conflicts["title"]) != 2 {
		t.Fatalf("region: %+v", rv)
	}

	if err := db.Resolve(ctx, "title", "agreed"); err != nil {
		t.Fatal(err)
	}
	if err := da.Remove(ctx, "items", "apple"); err != nil {
		t.Fatal(err)
	}
	if err := a.Doc("carts", "gone").Delete(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*clientsdk.Client{a, b, a} {
		if err := c.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	ga, gb = mustGet(t, da), mustGet(t, db)
	if !reflect.DeepEqual(ga, gb) || ga.Fields["title"] != "agreed" || len(ga.Conflicts) != 0 || fmt.Sprint(ga.Fields["items"]) != "[pear]" {
		t.Fatalf("after resolve and remove:\n%+v\n%+v", ga, gb)
	}
	if g := mustGet(t, b.Doc("carts", "gone")); !g.Deleted {
		t.Fatalf("delete did not reach b: %+v", g)
	}

	// b's watcher saw its own resolve as local and a's writes as remote.
	var local, remote int
	for len(watch) > 0 {
		ch := <-watch
		if ch.Local {
			local++
		} else {
			remote++
		}
	}
	if local != 1 || remote != 6 {
		t.Fatalf("watch: %d local, %d remote changes", local, remote)
	}
	if st := a.Status(); !st.Connected || st.Region != "nyc" || st.Pending != 0 || !st.Synced || st.LastSync.IsZero() {
		t.Fatalf("status %+v", st)
	}
}

// TestClockSkew: a device whose clock is ten minutes ahead writes
// offline. The region refuses its push; the device adopts the region's
// clock, re-stamps, and its writes land at once instead of in ten
// minutes. Nothing is lost.
func TestClockSkew(t *testing.T) {
	r, url := region(t, "nyc")
	putSchema(t, r)
	ahead := func() time.Time { return time.Now().Add(10 * time.Minute) }
	// Learn the schema with a good clock, then write offline with a bad
	// one: the clock is only corrected by a region.
	dir := t.TempDir()
	c := device(t, url, func(o *clientsdk.Options) { o.Dir = dir })
	ctx := ctxFor(t, 30*time.Second)
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	c.Close()
	c = device(t, "", func(o *clientsdk.Options) { o.Dir, o.Now = dir, ahead })
	doc := c.Doc("carts", "c9")
	for _, err := range []error{doc.Set(ctx, "title", "t"), doc.Add(ctx, "items", "kiwi"), doc.Incr(ctx, "stock", 5), doc.Incr(ctx, "stock", 1)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	c = device(t, url, func(o *clientsdk.Options) { o.Dir, o.Now = dir, ahead })
	if err := c.Sync(ctx); err != nil {
		t.Fatalf("sync after clock skew: %v (status %+v)", err, c.Status())
	}
	rv := regionDoc(t, r, "carts", "c9")
	if string(rv.Fields["title"]) != `"t"` || string(rv.Fields["items"]) != `["kiwi"]` || string(rv.Fields["stock"]) != "6" {
		t.Fatalf("region after re-stamp: %+v", rv)
	}
	if v := rv.Version.WallMillis(); v > time.Now().Add(time.Minute).UnixMilli() {
		t.Fatalf("the region holds a stamp from the future: %v", rv.Version)
	}
	// The device's new writes are stamped on the region's time now.
	if err := c.Doc("carts", "c9").Set(ctx, "title", "later"); err != nil {
		t.Fatal(err)
	}
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := string(regionDoc(t, r, "carts", "c9").Fields["title"]); got != `"later"` {
		t.Fatalf("title %s", got)
	}
}

// TestConcurrentUse: many goroutines write, read, watch and ask for
// status at once (run with -race); every write lands once.
func TestConcurrentUse(t *testing.T) {
	r, url := region(t, "nyc")
	putSchema(t, r)
	c := device(t, url)
	ctx := ctxFor(t, 60*time.Second)
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	wctx, stopWatch := context.WithCancel(ctx)
	watch, err := c.Watch(wctx, "carts")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	const writers, each = 8, 25
	errs := make(chan error, 3*writers*each)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			doc := c.Doc("carts", "shared")
			for i := 0; i < each; i++ {
				errs <- doc.Incr(ctx, "stock", 1)
				errs <- doc.Add(ctx, "items", fmt.Sprintf("w%d-%d", w, i))
				if _, err := doc.Get(ctx); err != nil {
					errs <- err
				}
				_ = c.Status()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	stopWatch()
	seen := 0
	for range watch {
		seen++
	}
	if seen != 2*writers*each {
		t.Fatalf("watch saw %d changes, want %d", seen, 2*writers*each)
	}
	rv := regionDoc(t, r, "carts", "shared")
	var items []string
	json.Unmarshal(rv.Fields["items"], &items)
	if string(rv.Fields["stock"]) != fmt.Sprint(writers*each) || len(items) != writers*each {
		t.Fatalf("region: stock %s, %d items", rv.Fields["stock"], len(items))
	}
}

// TestWidenCollections: a device that followed some collections and is
// opened again following more gets what was written to them before, not
// only what is written after: its vector had moved past those changes
// while they were left out.
func TestWidenCollections(t *testing.T) {
	_, url := region(t, "nyc")
	dir := t.TempDir()
	ctx := ctxFor(t, 30*time.Second)
	writer := device(t, url)
	for _, w := range []error{
		writer.Doc("carts", "c1").Set(ctx, "title", "groceries"),
		writer.Doc("notes", "n1").Set(ctx, "text", "call mom"),
	} {
		if w != nil {
			t.Fatal(w)
		}
	}
	if err := writer.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	narrow := device(t, url, func(o *clientsdk.Options) { o.Dir, o.Collections = dir, []string{"carts"} })
	if err := narrow.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, narrow.Doc("carts", "c1")).Fields["title"]; got != "groceries" {
		t.Fatalf("carts/c1 title = %v on the device following carts", got)
	}
	if got := mustGet(t, narrow.Doc("notes", "n1")).Fields; len(got) != 0 {
		t.Fatalf("notes/n1 = %v on a device not following notes", got)
	}
	narrow.Close()
	for i, colls := range [][]string{{"carts", "notes"}, nil} {
		wide := device(t, url, func(o *clientsdk.Options) { o.Dir, o.Collections = dir, colls })
		// The re-fetch brings carts/c1 again: no news. notes/n1 is news
		// once, on the first widening.
		wctx, stop := context.WithCancel(ctx)
		carts, err := wide.Watch(wctx, "carts")
		if err != nil {
			t.Fatal(err)
		}
		notes, err := wide.Watch(wctx, "notes")
		if err != nil {
			t.Fatal(err)
		}
		if err := wide.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		stop()
		if n := len(carts); n != 0 {
			t.Errorf("following %v: Watch reported %d carts changes the device held before", colls, n)
		}
		if n, want := len(notes), 1-i; n != want {
			t.Errorf("following %v: Watch reported %d notes changes, want %d", colls, n, want)
		}
		if got := mustGet(t, wide.Doc("notes", "n1")).Fields["text"]; got != "call mom" {
			t.Errorf("following %v: notes/n1 text = %v, want what was written before", colls, got)
		}
		if got := mustGet(t, wide.Doc("carts", "c1")).Fields["title"]; got != "groceries" {
			t.Errorf("following %v: carts/c1 title = %v", colls, got)
		}
		wide.Close()
	}
}
