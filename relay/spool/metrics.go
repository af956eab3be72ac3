package spool

import "github.com/prometheus/client_golang/prometheus"

// Metrics (package-level collectors: the only mutable package state). Labels
// are failure reasons, never addresses.
var (
	itemsGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "o365relay_spool_items",
		Help: "Messages in queue/.",
	})
	bytesGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "o365relay_spool_bytes",
		Help: "Bytes of the records in queue/ (bodies, envelopes and delivery state).",
	})
	oldestGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "o365relay_spool_oldest_timestamp_seconds",
		Help: "Unix time the oldest queued message was received (0: queue empty); age = time() - this.",
	})
	putDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "o365relay_spool_put_duration_seconds",
		Help:    "Time to make one message durable (write, fsync, rename, directory fsync).",
		Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5},
	})
	putFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "o365relay_spool_put_failures_total",
		Help: "Puts that did not make a message durable, by reason (limit, nospace, io, body).",
	}, []string{"reason"})
	quarantined = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "o365relay_spool_corrupt_total",
		Help: "Queue files moved to corrupt/ because they did not parse.",
	})
)

// Collectors returns the spool's metrics for the admin endpoint to register.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{itemsGauge, bytesGauge, oldestGauge, putDuration, putFailures, quarantined}
}
