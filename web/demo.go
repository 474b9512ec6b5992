package web

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/daemon"
	"github.com/syncd/syncd/node"
	"github.com/syncd/syncd/resolver"
)

// DemoNS is the namespace the demo's devices and scenarios use.
const DemoNS = "demo"

// DemoRegions are the demo's regions, in the order they start: the first
// is the NATS cluster's seed, which the others route to.
var DemoRegions = []string{"nyc", "london", "tokyo"}

// DemoSchema is set at start: one collection per scenario of the page, so
// each shows one merge policy.
var DemoSchema = map[string]resolver.Schema{
	"users_lww":    {Fields: map[string]crdt.Kind{"title": crdt.KindLWW}},
	"users_manual": {Fields: map[string]crdt.Kind{"title": crdt.KindManual}},
	"carts":        {Fields: map[string]crdt.Kind{"items": crdt.KindORSet}},
	"inventory":    {Fields: map[string]crdt.Kind{"stock": crdt.KindCounter}},
	"profiles":     {Fields: map[string]crdt.Kind{"bio": crdt.KindLWW}},
}

// DemoConfig is what `syncd demo` takes.
type DemoConfig struct {
	HTTPAddr string // the page and the regions' APIs (default 127.0.0.1:8080)
	// DataDir holds one SQLite store per region; empty: a temporary
	// directory, removed on exit.
	DataDir string
	Logger  *slog.Logger
	// Out receives the line with the page's URL (default stdout).
	Out io.Writer
}

// RunDemo starts the three regions, bridged by an embedded NATS cluster on
// loopback, sets the demo's schema, and serves the page at / and region R's
// HTTP API and websocket at /r/R/ on one origin (so the browser needs no
// CORS and the websocket's Origin check passes). It returns when ctx ends
// and every region has shut down.
func RunDemo(ctx context.Context, cfg DemoConfig) (err error) {
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = "127.0.0.1:8080"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Out == nil {
		cfg.Out = os.Stdout
	}
	assets, err := LoadAssets()
	if err != nil {
		return err
	}
	dir := cfg.DataDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "syncd-demo-"); err != nil {
			return fmt.Errorf("demo: data dir: %w", err)
		}
		defer os.RemoveAll(dir)
	}
	// Listen first: a busy port should fail before three stores open.
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("demo: listen %s: %w (try --http 127.0.0.1:0)", cfg.HTTPAddr, err)
	}
	defer ln.Close()

	rctx, stopRegions := context.WithCancel(ctx)
	defer stopRegions()
	var regions []*daemon.Region
	defer func() {
		stopRegions()
		for _, r := range regions {
			if e := r.Wait(); e != nil && err == nil {
				err = e
			}
		}
	}()
	var routes []string
	for _, name := range DemoRegions {
		r, err := daemon.Start(rctx, daemon.Config{
			Node: name, DataDir: filepath.Join(dir, name), HTTPAddr: "127.0.0.1:0",
			ClusterPort: -1, Routes: slices.Clone(routes), Logger: cfg.Logger,
		})
		if err != nil {
			return fmt.Errorf("demo: start %s: %w", name, err)
		}
		regions = append(regions, r)
		// Each later region routes to the ones before it; NATS gossips
		// the rest of the mesh.
		routes = append(routes, "nats-route://"+r.Bus.ClusterAddr())
	}
	if err := setSchema(ctx, regions); err != nil {
		return err
	}

	mux := http.NewServeMux()
	d := &demo{regions: regions, assets: assets}
	for _, r := range regions {
		prefix := "/r/" + r.Node.Name()
		mux.Handle(prefix+"/", http.StripPrefix(prefix, r.HTTP.Handler))
	}
	mux.HandleFunc("GET /demo/api/info", d.info)
	mux.HandleFunc("GET /demo/api/timeline", d.timeline)
	mux.Handle("/", assets)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn)}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	fmt.Fprintf(cfg.Out, "syncd demo: open http://%s/  (regions %s; data in %s)\n", ln.Addr(), strings.Join(DemoRegions, ", "), dir)

	select {
	case <-ctx.Done():
	case err = <-served:
		err = fmt.Errorf("demo: serve: %w", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx) // the regions' own shutdown reports what matters
	return err
}

// setSchema writes the schema at the first region and waits until every
// region holds it, so the devices' first sync brings it wherever they
// connect.
func setSchema(ctx context.Context, regions []*daemon.Region) error {
	colls := make([]string, 0, len(DemoSchema))
	for c := range DemoSchema {
		colls = append(colls, c)
	}
	slices.Sort(colls)
	for _, r := range regions {
		if err := r.Node.Open(ctx, DemoNS); err != nil {
			return fmt.Errorf("demo: open namespace at %s: %w", r.Node.Name(), err)
		}
	}
	for _, c := range colls {
		if _, err := regions[0].Node.PutSchema(ctx, DemoNS, c, DemoSchema[c], node.WriteOptions{}); err != nil {
			return fmt.Errorf("demo: schema of %s: %w", c, err)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		missing := ""
		for _, r := range regions {
			for _, c := range colls {
				fs, err := r.Store.GetDoc(wctx, crdt.DocKey{NS: DemoNS, Coll: resolver.SchemaColl, Doc: c})
				if err != nil {
					return fmt.Errorf("demo: read schema at %s: %w", r.Node.Name(), err)
				}
				if got := resolver.SchemaFromDoc(fs); !sameSchema(got, DemoSchema[c]) {
					missing = r.Node.Name() + " lacks the schema of " + c
				}
			}
		}
		if missing == "" {
			return nil
		}
		select {
		case <-wctx.Done():
			return fmt.Errorf("demo: regions did not connect: %s after 30s", missing)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func sameSchema(got, want resolver.Schema) bool {
	for f := range want.Fields {
		if got.KindOf(f) != want.KindOf(f) {
			return false
		}
	}
	return true
}

type demo struct {
	regions []*daemon.Region
	assets  *Assets
}

type regionInfo struct {
	Name   string         `json:"name"`
	ID     crdt.ReplicaID `json:"id"`
	Path   string         `json:"path,omitempty"`   // its API and websocket on this origin
	Addr   string         `json:"addr,omitempty"`   // its own listener, for `syncd status --http`
	Vector crdt.Vector    `json:"vector,omitempty"` // timeline only
}

// info tells the page what it runs against. epoch changes when the
// regions do (a new data directory), so devices saved in IndexedDB
// against other regions start afresh instead of holding data no region
// has.
func (d *demo) info(w http.ResponseWriter, r *http.Request) {
	out := struct {
		NS      string                     `json:"ns"`
		Epoch   string                     `json:"epoch"`
		Regions []regionInfo               `json:"regions"`
		Schema  map[string]resolver.Schema `json:"schema"`
		Wasm    any                        `json:"wasm"`
	}{NS: DemoNS, Schema: DemoSchema, Wasm: d.assets.Manifest()}
	h := sha256.New()
	for _, reg := range d.regions {
		out.Regions = append(out.Regions, regionInfo{Name: reg.Node.Name(), ID: reg.Node.ID(), Path: "/r/" + reg.Node.Name(), Addr: reg.Addr})
		id := reg.Node.ID()
		h.Write(id[:])
	}
	out.Epoch = hex.EncodeToString(h.Sum(nil)[:8])
	writeJSON(w, out)
}

// timelineLimit bounds the changes the timeline shows.
const timelineLimit = 60

// timeline returns the newest changes of the demo namespace (schema
// writes left out), read from the regions' change logs, with every
// region's vector read just before: a change stamped (R, n) has reached
// region X when X's vector holds R up to n.
func (d *demo) timeline(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	type source struct {
		reg  *daemon.Region
		upto uint64
	}
	best := map[crdt.ReplicaID]source{}
	var infos []regionInfo
	for _, reg := range d.regions {
		v, err := reg.Node.Vector(ctx, DemoNS)
		if err != nil {
			httpErr(w, err)
			return
		}
		infos = append(infos, regionInfo{Name: reg.Node.Name(), ID: reg.Node.ID(), Vector: v})
		for id, n := range v {
			if n > best[id].upto {
				best[id] = source{reg, n}
			}
		}
	}
	var changes []crdt.Change
	for id, s := range best {
		// Schema writes are in the log too; read a page more than shown
		// so they do not crowd out the rest.
		n := uint64(timelineLimit + len(DemoSchema)*2)
		from := uint64(1)
		if s.upto > n {
			from = s.upto - n + 1
		}
		cs, err := s.reg.Store.Storage(DemoNS).Log(id, from, int(n))
		if err != nil {
			httpErr(w, err)
			return
		}
		for _, c := range cs {
			if c.Coll == resolver.SchemaColl {
				continue
			}
			c.Context = nil // the page does not show it
			changes = append(changes, c)
		}
	}
	slices.SortFunc(changes, func(a, b crdt.Change) int {
		return cmp.Or(cmp.Compare(b.HLC, a.HLC), strings.Compare(b.ID.String(), a.ID.String()))
	})
	if len(changes) > timelineLimit {
		changes = changes[:timelineLimit]
	}
	if changes == nil {
		changes = []crdt.Change{}
	}
	writeJSON(w, struct {
		Regions []regionInfo  `json:"regions"`
		Changes []crdt.Change `json:"changes"`
	}{infos, changes})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(v)
}

func httpErr(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	if errors.Is(err, node.ErrStopped) || errors.Is(err, context.Canceled) {
		status = http.StatusServiceUnavailable
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": "internal", "message": err.Error()}})
}
