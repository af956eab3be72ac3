package relay

import "github.com/prometheus/client_golang/prometheus"

// Metrics of the intake that the smtpd package reports through callbacks.
// Package-level metrics are the one kind of package state the house allows.
var connectionsRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "o365relay_smtp_connections_refused_total",
	Help: "Client connections refused at connect, by reason (network, total cap, per-client cap, http, tls).",
}, []string{"reason"})

// Collectors returns the intake's metrics for the admin endpoint.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{connectionsRefused}
}
