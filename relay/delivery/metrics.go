package delivery

import "github.com/prometheus/client_golang/prometheus"

// Metrics (docs/design.md#metrics). Labels: mailbox name and reply class only.
var (
	messagesTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "o365relay_delivery_messages_total",
		Help: "Delivery outcomes by mailbox, outcome (delivered, deferred, failed) and reply class (e.g. 250, 4.3.2, 5.7.3, local).",
	}, []string{"mailbox", "outcome", "class"})
	attemptDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "o365relay_delivery_attempt_duration_seconds",
		Help:    "Duration of one delivery attempt to Exchange Online, whatever its outcome.",
		Buckets: []float64{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120},
	})
	pacedTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "o365relay_delivery_paced_total",
		Help: "Attempts postponed to keep a mailbox within its limits, by limit (rate, daily_recipients).",
	}, []string{"mailbox", "limit"})
	mailboxHealthy = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "o365relay_delivery_mailbox_healthy",
		Help: "1 if delivery for the mailbox is flowing, 0 if it is held (the path to Exchange fails, the mailbox is full, quota, throttling).",
	}, []string{"mailbox"})
	mailboxHeld = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "o365relay_delivery_mailbox_held",
		Help: "1 while delivery for the mailbox is held, labelled with why: token, connect, tls, auth (the path to Exchange), mailbox_full (the sending mailbox is over its quota), quota, throttled, continuous_errors.",
	}, []string{"mailbox", "reason"})
)

// Collectors returns the delivery metrics for the admin endpoint.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{messagesTotal, outcomesTotal, attemptDuration, pacedTotal, mailboxHealthy, mailboxHeld}
}
