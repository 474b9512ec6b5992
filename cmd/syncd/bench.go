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
	fs.IntVar(&lo.Rounds, "rounds", 6, "local: turns each figure and its baseline take (store and raw writes, HTTP writes and the no-op handler within --duration, applied and raw batches)")
	fs.BoolVar(&lo.SkipFull, "skip-full", false, "local: skip the synchronous=FULL phases")
	fs.BoolVar(&lo.SkipHTTP, "skip-http", false, "local: skip the HTTP phases")
	fs.BoolVar(&lo.SkipApply, "skip-apply", false, "local: skip the batch-apply phase")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the run to this file")
	var ro bench.ReplicationOptions
	fs.IntVar(&ro.Rate, "rate", 1000, "replication: writes/s of the propagation phase")
	fs.IntVar(&ro.CatchUp, "catchup-changes", 200_000, "replication: changes written while the second region is down")
	fs.IntVar(&ro.Heal, "heal-changes", 10_000, "replication: divergent changes per side of the partition")
	fs.IntVar(&ro.Ops, "ops", 100, "replication: changes per write request in the throughput phases")
	fs.IntVar(&ro.Conns, "conns", 8, "replication: concurrent writers in the throughput phases")
	fs.BoolVar(&ro.InProcess, "in-process", false, "replication: run the regions in this process (so --cpuprofile covers them)")
	var do bench.DevicesOptions
	fs.IntVar(&do.Rate, "device-rate", 500, "devices: changes/s of the device-to-device latency phase")
	fs.IntVar(&do.Clients, "clients", 1000, "devices: connected clients for the fan-out and idle-memory figures")
	fs.IntVar(&do.CatchUp, "device-catchup", 100_000, "devices: changes a fresh device catches up on")
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
	case "replication":
		ro.Duration, ro.Dir, ro.Progress = lo.Duration, lo.Dir, lo.Progress
		if *quick {
			ro.Duration, ro.CatchUp, ro.Heal = 500*time.Millisecond, 5000, 1000
		}
		rep, err = bench.Replication(ctx, ro)
	case "devices":
		do.Duration, do.Dir, do.Progress = lo.Duration, lo.Dir, lo.Progress
		if *quick {
			do.Duration, do.Clients, do.CatchUp = time.Second, 100, 10_000
		}
		rep, err = bench.Devices(ctx, do)
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
