package node

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/syncd/syncd/replica"
)

// Metrics are the loop's Prometheus collectors. A nil *Metrics records
// nothing, so tests and the SDK need not set one up.
type Metrics struct {
	writes   prometheus.Counter
	applied  prometheus.Counter
	commits  prometheus.Histogram
	batch    prometheus.Histogram
	messages *prometheus.CounterVec
	drops    prometheus.Counter
}

// NewMetrics registers the node's collectors with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		writes: prometheus.NewCounter(prometheus.CounterOpts{Name: "syncd_writes_total",
			Help: "Local changes written (one per field op)."}),
		applied: prometheus.NewCounter(prometheus.CounterOpts{Name: "syncd_log_entries_total",
			Help: "Changes made durable in the log, local and remote."}),
		commits: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "syncd_commit_seconds",
			Help: "Time to save one round (one SQLite transaction).", Buckets: prometheus.ExponentialBuckets(0.00005, 2, 16)}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "syncd_commit_changes",
			Help: "Changes saved per round (group commit batch size).", Buckets: prometheus.ExponentialBuckets(1, 2, 14)}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "syncd_messages_received_total",
			Help: "Replication messages received from other regions, by type."}, []string{"type"}),
		drops: prometheus.NewCounter(prometheus.CounterOpts{Name: "syncd_inputs_dropped_total",
			Help: "Peer messages dropped because the loop was saturated (anti-entropy repairs them)."}),
	}
	reg.MustRegister(m.writes, m.applied, m.commits, m.batch, m.messages, m.drops)
	return m
}

func (m *Metrics) wrote(n int) {
	if m != nil {
		m.writes.Add(float64(n))
	}
}

func (m *Metrics) commit(d time.Duration, rds []*replica.Ready) {
	if m == nil {
		return
	}
	n := 0
	for _, rd := range rds {
		n += len(rd.Log)
	}
	m.applied.Add(float64(n))
	m.commits.Observe(d.Seconds())
	m.batch.Observe(float64(n))
}

func (m *Metrics) stepped(msg replica.Message) {
	if m != nil {
		m.messages.WithLabelValues(msg.Type.String()).Inc()
	}
}

func (m *Metrics) dropped() {
	if m != nil {
		m.drops.Inc()
	}
}
