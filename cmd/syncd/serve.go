package main

import (
	"context"
	"flag"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/syncd/syncd/daemon"
)

func serve(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	var cfg daemon.Config
	fs.StringVar(&cfg.Node, "node", "", "this region's name (required), e.g. nyc")
	fs.StringVar(&cfg.DataDir, "data", "", "data directory (default data/NODE)")
	fs.StringVar(&cfg.HTTPAddr, "http", "127.0.0.1:8080", "HTTP listen address")
	fs.StringVar(&cfg.Durability, "durability", "normal", "normal (survives a process crash) or full (fsync every commit: survives power loss)")
	fs.StringVar(&cfg.TokensFile, "tokens", "", "tokens file (JSON); without it only loopback listening is allowed")
	origins := fs.String("allowed-origins", "", "comma-separated browser origins (host patterns) allowed on the websocket; * for any")
	fs.BoolVar(&cfg.Insecure, "insecure", false, "allow a non-loopback listener without tokens")
	fs.Int64Var(&cfg.MaxBody, "max-body", 1<<20, "largest request body in bytes")
	fs.DurationVar(&cfg.MaxSkew, "max-clock-skew", time.Minute, "refuse remote stamps further ahead of the local clock than this")
	fs.DurationVar(&cfg.ClockOffset, "test-clock-offset", 0, "testing only: shift this process's wall clock")
	fs.IntVar(&cfg.NATSPort, "nats-port", 0, "embedded NATS client port (0: in-process only, -1: random)")
	fs.IntVar(&cfg.ClusterPort, "cluster-port", 0, "embedded NATS cluster (route) port for other regions")
	routes := fs.String("routes", "", "comma-separated NATS routes to other regions, e.g. nats-route://127.0.0.1:6223")
	fs.StringVar(&cfg.NATSConfig, "nats-config", "", "a nats-server config file for the embedded server (routes, gateways, leafnodes, TLS, accounts)")
	fs.StringVar(&cfg.NATSURL, "nats-url", "", "use an existing NATS deployment instead of the embedded server")
	logJSON := fs.Bool("log-json", false, "log JSON lines instead of text")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg.Logger = newLogger(*logJSON)
	if *origins != "" {
		cfg.AllowedOrigins = strings.Split(*origins, ",")
	}
	if *routes != "" {
		cfg.Routes = strings.Split(*routes, ",")
	}
	r, err := daemon.Start(ctx, cfg)
	if err != nil {
		return err
	}
	return r.Wait()
}

func newLogger(asJSON bool) *slog.Logger {
	if asJSON {
		return slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, nil))
}
