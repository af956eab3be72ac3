package upstream

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/o365relay/o365relay/relay/reply"
)

// Metrics are package-level collectors (the only mutable package state); the
// admin endpoint registers them via Collectors. Labels carry stages and reply codes only.
var (
	handshakeSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "o365relay_upstream_handshake_seconds",
		Help:    "Time from TCP connect to a verified TLS session with Exchange Online (greeting, EHLO, STARTTLS, TLS handshake, EHLO).",
		Buckets: prometheus.ExponentialBuckets(0.01, 2, 12),
	})
	authSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "o365relay_upstream_auth_seconds",
		Help:    "Duration of AUTH XOAUTH2 exchanges with Exchange Online.",
		Buckets: prometheus.ExponentialBuckets(0.01, 2, 12),
	})
	connectionsOpen = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "o365relay_upstream_connections_open",
		Help: "SMTP connections to Exchange Online currently open (pooled idle and in use).",
	})
	dialsTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "o365relay_upstream_dials_total",
		Help: "TCP connections opened to Exchange Online.",
	})
	reconnectsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "o365relay_upstream_reconnects_total",
		Help: "Deliveries that recovered on another connection: stale (a pooled connection was closed by Exchange), token_expired (501 5.5.127), 432 (a new connection refused for the concurrent connections limit; the delivery scheduler lowers the mailbox's limit and waits for a connection of its own when it holds one).",
	}, []string{"reason"})
	repliesTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "o365relay_upstream_replies_total",
		Help: "Outcomes of upstream commands by stage and reply code (synthetic 451 for network and TLS failures).",
	}, []string{"stage", "code"})
)

// Collectors returns this package's metrics for registration.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{handshakeSeconds, authSeconds, connectionsOpen, dialsTotal, reconnectsTotal, repliesTotal}
}

func countReply(stage reply.Stage, code int) {
	repliesTotal.WithLabelValues(string(stage), strconv.Itoa(code)).Inc()
}
