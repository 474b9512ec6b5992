package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime/pprof"
	"time"

	"github.com/syncd/syncd/bench"
)

func runBench(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("bench: which one? local, replication or devices")
	}
	fs := flag.NewFlagSet("bench "+args[0], flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print one JSON object instead of a table")
	quick := fs.Bool("quick", false, "smaller runs (a smoke test, not figures)")
	var lo bench.LocalOptions
	fs.DurationVar(&lo.Duration, "duration", 3*time.Second, "length of each load phase")
	fs.IntVar(&lo.RSSDocs, "rss-docs", 1_000_000, "documents for the RSS figure (0 skips it)")
	fs.StringVar(&lo.Dir, "dir", "", "scratch directory (default a temporary one)")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the run to this file")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if !*asJSON {
		lo.Progress = os.Stderr
	}
	var rep *bench.Report
	var err error
	switch args[0] {
	case "local":
		if *quick {
			lo.Writes, lo.Batches, lo.Duration, lo.RSSDocs = 2000, 10, 500*time.Millisecond, 0
		}
		rep, err = bench.Local(ctx, lo)
	default:
		return fmt.Errorf("bench: unknown benchmark %q (local, replication, devices)", args[0])
	}
	if err != nil {
		return fmt.Errorf("bench %s: %w", args[0], err)
	}
	if *asJSON {
		return json.NewEncoder(os.Stdout).Encode(rep.JSON())
	}
	rep.Print(os.Stdout)
	return nil
}
