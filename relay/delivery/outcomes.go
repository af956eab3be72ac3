package delivery

import "github.com/prometheus/client_golang/prometheus"

// outcomesTotal is messagesTotal without the reply class: its label values
// are known in advance, so InitMetrics can create every series at 0 and an
// alert on increase() sees the very first failure (a series that appears
// at 1 has no increase).
var outcomesTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "o365relay_delivery_outcomes_total",
	Help: "Delivery outcomes by mailbox and outcome (delivered, deferred, failed); o365relay_delivery_messages_total adds the reply class.",
}, []string{"mailbox", "outcome"})

// count records one outcome in both counters.
func count(mailbox, outcome, class string) {
	messagesTotal.WithLabelValues(mailbox, outcome, class).Inc()
	outcomesTotal.WithLabelValues(mailbox, outcome).Inc()
}

// InitMetrics creates the per-mailbox series of the configured mailboxes:
// outcomes and pacing at 0, health at 1 (nothing held at start).
func InitMetrics(mailboxes []string) {
	for _, mb := range mailboxes {
		for _, o := range []string{"delivered", "deferred", "failed"} {
			outcomesTotal.WithLabelValues(mb, o)
		}
		for _, l := range []string{"rate", "daily_recipients"} {
			pacedTotal.WithLabelValues(mb, l)
		}
		mailboxHealthy.WithLabelValues(mb).Set(1)
	}
}
