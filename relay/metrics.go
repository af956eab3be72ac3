package relay

import "github.com/prometheus/client_golang/prometheus"

// Metrics of the intake that the smtpd package reports through callbacks.
// Package-level metrics are the one kind of package state allowed (docs/design.md#metrics).
var connectionsRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "o365relay_smtp_connections_refused_total",
	Help: "Client connections refused at connect, by reason (network, total cap, per-client cap, http, tls).",
}, []string{"reason"})

var (
	messagesReceived = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "o365relay_messages_received_total",
		Help: "Messages applications handed to the relay, by mailbox and result (accepted: durable in the spool; refused: the client got a 4xx/5xx at the end of DATA — size, line endings, hop count, a full or failing spool).",
	}, []string{"mailbox", "result"})
	certNotAfter = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "o365relay_certificate_not_after_timestamp_seconds",
		Help: "Unix time at which the certificate in use for the client assertion expires (0 without a certificate).",
	})
	certExpiring = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "o365relay_certificate_expiring",
		Help: "1 from 30 days before the certificate in use expires (upload and roll out its successor), else 0.",
	})
	credentialReloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "o365relay_certificate_reloads_total",
		Help: "Certificate reloads (SIGHUP or a new file content) by result: success, invalid (does not load, expired, key mismatch), refused_by_entra.",
	}, []string{"result"})
)

// Collectors returns the relay's own metrics for the admin endpoint.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{connectionsRefused, messagesReceived, certNotAfter, certExpiring, credentialReloads}
}
