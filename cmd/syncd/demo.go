package main

import (
	"context"
	"flag"

	"github.com/syncd/syncd/web"
)

func demo(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	var cfg web.DemoConfig
	fs.StringVar(&cfg.HTTPAddr, "http", "127.0.0.1:8080", "where to serve the demo page and the three regions' APIs")
	fs.StringVar(&cfg.DataDir, "data", "", "keep the regions' stores here (default a temporary directory, removed on exit)")
	logJSON := fs.Bool("log-json", false, "log JSON lines instead of text")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg.Logger = newLogger(*logJSON)
	return web.RunDemo(ctx, cfg)
}
