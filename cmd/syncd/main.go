// Command syncd runs a region of the syncd sync service, the browser demo,
// a status summary or the benchmarks. Flags become a config; the work is in
// package daemon (serve, demo), server (status) and bench.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/syncd/syncd/internal/gcfloor"
)

const usage = `syncd: multi-leader CRDT sync for offline-capable apps

usage:
  syncd serve  --node NAME [--data DIR] [--http ADDR] [flags]   run a region
  syncd demo   [--http ADDR] [--data DIR]                       three regions and the browser demo
  syncd status [--http ADDR]                                    a region's peers, lag and vectors
  syncd bench  local|replication|devices [--json]               figures next to their raw baselines

run "syncd COMMAND -h" for a command's flags.
`

// gcFloor is the heap goal below which the collector does not run (see
// package gcfloor): about ten times fewer collections while the heap is
// small, at the cost of at most this much garbage held.
const gcFloor = 32 << 20

func main() {
	defer gcfloor.Start(gcFloor)()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "syncd:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return fmt.Errorf("no command given")
	}
	switch args[0] {
	case "serve":
		return serve(ctx, args[1:])
	case "demo":
		return demo(ctx, args[1:])
	case "status":
		return status(ctx, args[1:])
	case "bench":
		return runBench(ctx, args[1:])
	case "help", "-h", "--help":
		fmt.Print(usage)
		return nil
	}
	fmt.Fprint(os.Stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}
