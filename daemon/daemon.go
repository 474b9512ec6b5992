// Package daemon assembles one region: its SQLite store, its node loop,
// its NATS bridge and its HTTP API, with a lifetime tied to a context.
// `syncd serve` runs one; `syncd demo` runs three in one process.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/natsbus"
	"github.com/syncd/syncd/node"
	"github.com/syncd/syncd/replica"
	"github.com/syncd/syncd/server"
	"github.com/syncd/syncd/sqlitestore"
)

// Config is everything `syncd serve` takes.
type Config struct {
	Node       string // this region's name
	DataDir    string
	HTTPAddr   string
	Durability string // "normal" or "full"
	TokensFile string
	Insecure   bool // allow a non-loopback listener without tokens
	// AllowedOrigins are the browser origins (host patterns) allowed on
	// the websocket; "*" allows any.
	AllowedOrigins []string
	MaxBody        int64
	MaxSkew        time.Duration
	// ClockOffset shifts this process's wall clock (tests of hostile
	// clocks only; hidden flag).
	ClockOffset time.Duration
	Tick        time.Duration
	// NATS: an embedded server by default; NATSURL uses an existing
	// deployment instead.
	NATSPort    int
	ClusterPort int
	Routes      []string
	NATSConfig  string
	NATSURL     string
	Logger      *slog.Logger
	// Demo serves the browser demo at / (nil: a plain text page).
	Demo http.Handler
}

// Region is a running region.
type Region struct {
	cfg    Config
	Node   *node.Node
	Store  *sqlitestore.Store
	HTTP   *http.Server
	Bus    *natsbus.Bus
	Addr   string // the address the HTTP API listens on
	reg    *prometheus.Registry
	runErr chan error
}

// ErrInsecure refuses an unauthenticated listener reachable from other
// machines.
var ErrInsecure = errors.New("refusing to listen on a non-loopback address without --tokens (use --insecure to allow)")

// Start opens the store, starts the loop and the listeners. The region
// stops when ctx is done; Wait returns once it has shut down.
func Start(ctx context.Context, cfg Config) (*Region, error) {
	if cfg.Node == "" {
		return nil, errors.New("--node is required: name this region (e.g. nyc)")
	}
	if cfg.DataDir == "" {
		cfg.DataDir = filepath.Join("data", cfg.Node)
	}
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = "127.0.0.1:8080"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Tick <= 0 {
		cfg.Tick = 50 * time.Millisecond
	}
	log := cfg.Logger.With("node", cfg.Node)
	// Change ids are random UUIDs made on the write loop: drawing them from
	// a pooled buffer saves a getrandom syscall per change.
	uuid.EnableRandPool()
	var tokens *server.Tokens
	if cfg.TokensFile != "" {
		t, err := server.LoadTokens(cfg.TokensFile)
		if err != nil {
			return nil, err
		}
		tokens = t
	}
	if tokens == nil && !cfg.Insecure && !isLoopback(cfg.HTTPAddr) {
		return nil, fmt.Errorf("%w: %s", ErrInsecure, cfg.HTTPAddr)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	st, err := sqlitestore.Open(ctx, filepath.Join(cfg.DataDir, "syncd.db"), sqlitestore.Options{Durability: cfg.Durability, KeepLog: true})
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	hw, err := st.NodeState(ctx)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("read clock high-water mark: %w", err)
	}
	offset := cfg.ClockOffset.Milliseconds()
	clock := hlc.NewClock(func() int64 { return time.Now().UnixMilli() + offset }, cfg.MaxSkew)
	clock.Restore(hw)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	n := node.New(node.Config{
		ID: st.ReplicaID(), Name: cfg.Node, Role: replica.RoleRegion, Store: st, Clock: clock,
		Tick: cfg.Tick, Logger: log, Metrics: node.NewMetrics(reg),
	})
	bus, err := natsbus.Start(ctx, st.ReplicaID(), natsbus.Options{
		Name: cfg.Node, Port: cfg.NATSPort, ClusterPort: cfg.ClusterPort, Routes: cfg.Routes,
		ConfigFile: cfg.NATSConfig, URL: cfg.NATSURL, Logger: log,
	})
	if err != nil {
		st.Close()
		return nil, err
	}
	n.SetTransport(bus)
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		bus.Close()
		st.Close()
		return nil, fmt.Errorf("listen %s: %w", cfg.HTTPAddr, err)
	}
	r := &Region{cfg: cfg, Node: n, Store: st, Bus: bus, Addr: ln.Addr().String(), reg: reg, runErr: make(chan error, 1)}
	now := func() int64 { return time.Now().UnixMilli() + offset }
	gw := server.NewGateway(server.GatewayConfig{
		Node: n, Tokens: tokens, AllowedOrigins: cfg.AllowedOrigins, Logger: log,
		Clock: func() hlc.Timestamp { return hlc.Make(now(), 0) },
	})
	api := server.New(server.Config{
		Node: n, Reader: st, Tokens: tokens, MaxBody: cfg.MaxBody, Gatherer: reg, Logger: log,
		Demo: cfg.Demo, Ws: gw, Tick: cfg.Tick, Now: now,
	})
	reg.MustRegister(api.PeerCollector())
	r.HTTP = &http.Server{Handler: api, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}

	loopCtx, stopLoop := context.WithCancel(context.Background())
	loopDone := make(chan error, 1)
	go func() { loopDone <- n.Run(loopCtx) }()
	namespaces, err := st.Namespaces(ctx)
	if err != nil {
		log.Warn("list namespaces", "err", err)
	}
	for _, ns := range namespaces {
		if err := n.Open(ctx, ns); err != nil {
			log.Warn("open namespace", "ns", ns, "err", err)
		}
	}
	if err := bus.Subscribe(n.Deliver); err != nil {
		log.Error("subscribe", "err", err)
	}
	httpDone := make(chan error, 1)
	go func() { httpDone <- r.HTTP.Serve(ln) }()
	log.Info("region serving", "http", "http://"+r.Addr, "data", cfg.DataDir, "replica", st.ReplicaID(),
		"nats", bus.ClientURL(), "cluster", bus.ClusterAddr())

	go func() {
		var err error
		select {
		case <-ctx.Done():
		case err = <-loopDone:
			err = fmt.Errorf("node loop stopped: %w", err)
			log.Error("node loop stopped", "err", err)
			loopDone <- nil
		case err = <-httpDone:
			log.Error("http server stopped", "err", err)
		}
		// Drain: stop taking requests, let in-flight writes finish (the
		// loop answers every write it accepted), then close the store.
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// Websockets are hijacked: HTTP shutdown does not see them.
		gw.Shutdown()
		if e := r.HTTP.Shutdown(sctx); e != nil {
			log.Warn("http shutdown", "err", e)
		}
		stopLoop()
		if e := <-loopDone; e != nil && err == nil {
			err = e
		}
		bus.Close()
		if e := st.Close(); e != nil && err == nil {
			err = fmt.Errorf("close store: %w", e)
		}
		log.Info("region stopped")
		r.runErr <- err
	}()
	return r, nil
}

// Wait blocks until the region has shut down and returns why.
func (r *Region) Wait() error { return <-r.runErr }

// Registry returns the region's Prometheus registry.
func (r *Region) Registry() *prometheus.Registry { return r.reg }

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
