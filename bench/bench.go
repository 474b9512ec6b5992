// Package bench measures syncd's figures next to their raw baselines in
// the same run, as ratios, because the machines we measure on are shared
// and noisy. `syncd bench local|replication|devices` prints a table, or
// one JSON object with --json.
package bench

import (
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sort"
	"strings"
	"time"
)

// Row is one figure of a report.
type Row struct {
	Key      string  // the JSON key
	Label    string  // what it is
	Value    float64 // the figure
	Unit     string
	Baseline string // the JSON key of the baseline it is compared with, if any
	Target   string // what the issue asks, e.g. ">= 0.5x"
	ratio    float64
}

// Report is the result of one bench command.
type Report struct {
	Name string
	Rows []Row
	Note []string
}

func (r *Report) add(key, label string, v float64, unit string) {
	r.Rows = append(r.Rows, Row{Key: key, Label: label, Value: v, Unit: unit})
}

func (r *Report) vs(key, label string, v float64, unit, baseline, target string) {
	r.Rows = append(r.Rows, Row{Key: key, Label: label, Value: v, Unit: unit, Baseline: baseline, Target: target})
}

func (r *Report) value(key string) float64 {
	for _, row := range r.Rows {
		if row.Key == key {
			return row.Value
		}
	}
	return math.NaN()
}

// JSON returns the figures as one flat object of key -> number, plus
// ratio_<key> for each figure with a baseline.
func (r *Report) JSON() map[string]float64 {
	out := map[string]float64{}
	for _, row := range r.Rows {
		out[row.Key] = round(row.Value)
		if row.Baseline != "" {
			if b := r.value(row.Baseline); b > 0 {
				out["ratio_"+row.Key] = round(row.Value / b)
			}
		}
	}
	return out
}

// Print writes the table.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "syncd bench %s\n\n", r.Name)
	fmt.Fprintf(w, "%-32s %14s %-8s %-28s %8s %s\n", "figure", "value", "unit", "baseline", "ratio", "target")
	for _, row := range r.Rows {
		ratio, base := "", ""
		if row.Baseline != "" {
			base = row.Baseline
			if b := r.value(row.Baseline); b > 0 {
				ratio = fmt.Sprintf("%.2fx", row.Value/b)
			}
		}
		fmt.Fprintf(w, "%-32s %14s %-8s %-28s %8s %s\n", row.Key, human(row.Value), row.Unit, base, ratio, row.Target)
	}
	for _, n := range r.Note {
		fmt.Fprintln(w, "  "+n)
	}
}

func human(v float64) string {
	switch {
	case v >= 1000:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

func round(v float64) float64 { return math.Round(v*1000) / 1000 }

// latencies collects durations and reports percentiles in milliseconds.
type latencies []time.Duration

func (l latencies) pct(p float64) float64 {
	if len(l) == 0 {
		return math.NaN()
	}
	s := slices.Clone(l)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return float64(s[max(i, 0)].Microseconds()) / 1000
}

func joinKeys(m map[string]float64) string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return strings.Join(ks, ",")
}

// scratch makes *dir a temporary directory when it is empty, and returns
// what removes it again; a directory the caller named is kept.
func scratch(dir *string, prefix string) (func(), error) {
	if *dir != "" {
		return func() {}, nil
	}
	d, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, fmt.Errorf("scratch directory: %w", err)
	}
	*dir = d
	return func() { os.RemoveAll(d) }, nil
}
