package token

import "github.com/prometheus/client_golang/prometheus"

// Metrics (docs/design.md#metrics). Labels carry outcomes and AADSTS codes, never
// tokens, client IDs or tenant IDs.
var (
	requestsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "o365relay_token_requests_total",
		Help: "Token requests to Entra ID by result (success, failure) and code (AADSTS number, http_<status>, network).",
	}, []string{"result", "code"})
	requestDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "o365relay_token_request_duration_seconds",
		Help:    "Duration of token requests to Entra ID, whatever their outcome.",
		Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30},
	})
	expiryTimestamp = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "o365relay_token_expiry_timestamp_seconds",
		Help: "Unix time at which the access token currently held expires (0: none held).",
	})
	refreshFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "o365relay_token_refresh_failures_total",
		Help: "Failed token requests (each one starts or extends a backoff).",
	})
)

// Collectors returns the package's metrics for the admin endpoint's registry.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{requestsTotal, requestDuration, expiryTimestamp, refreshFailures}
}
