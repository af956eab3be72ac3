package relay

import (
	"context"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/o365relay/o365relay/relay/delivery"
	"github.com/o365relay/o365relay/relay/spool"
	"github.com/o365relay/o365relay/relay/upstream"
	"github.com/o365relay/o365relay/token"
)

// collectors are every metric the admin endpoint exports but the intake's
// open-connections gauge (made in New from the listener): the packages'
// counters and this relay's state.
func (r *Relay) collectors() []prometheus.Collector {
	var cs []prometheus.Collector
	cs = append(cs, token.Collectors()...)
	cs = append(cs, upstream.Collectors()...)
	cs = append(cs, spool.Collectors()...)
	cs = append(cs, delivery.Collectors()...)
	cs = append(cs, Collectors()...)
	return append(cs, r.stateCollectors()...)
}

// stateCollectors are the metrics read from this relay's state when
// scraped (so they need no package state): build info, readiness, the
// spool's limits and free space, the last token success. The alert rules in
// deploy/prometheus are written against these and the packages' counters.
func (r *Relay) stateCollectors() []prometheus.Collector {
	b := r.build
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "o365relay_build_info",
			Help:        "Always 1; the labels identify the running binary (module version, VCS revision, Go version).",
			ConstLabels: prometheus.Labels{"version": b.Version, "revision": b.Revision, "goversion": b.GoVersion},
		}, func() float64 { return 1 }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "o365relay_ready",
			Help: "1 when mail handed over now is safe (listener serving, spool writable with room, not draining), as /readyz; the token and Exchange never make it 0.",
		}, func() float64 {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			if r.Readiness(ctx).OK {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "o365relay_spool_max_messages",
			Help: "spool_max_messages: queued messages beyond which new mail gets 452 (0: unlimited).",
		}, func() float64 { return float64(r.cfg.SpoolMaxItems) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "o365relay_spool_max_bytes",
			Help: "spool_max_bytes: queued body bytes beyond which new mail gets 452 (0: unlimited).",
		}, func() float64 { return float64(r.cfg.SpoolMaxBytes) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "o365relay_spool_filesystem_avail_bytes",
			Help: "Bytes available to the relay on the spool directory's file system.",
		}, func() float64 {
			var fs syscall.Statfs_t
			if syscall.Statfs(r.cfg.SpoolDir, &fs) != nil {
				return 0
			}
			return float64(int64(fs.Bavail) * fs.Bsize)
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "o365relay_token_last_success_timestamp_seconds",
			Help: "Unix time of the last successful token request to Entra ID (0: none since start).",
		}, func() float64 {
			if t := r.tokens.Status().LastRefresh; !t.IsZero() {
				return float64(t.Unix())
			}
			return 0
		}),
	}
}

// initMailboxMetrics creates the series of every configured mailbox at 0
// (and healthy at 1), so rate(), increase() and absent() work before the
// first event: a counter that appears at 1 on its first failure shows no
// increase.
func initMailboxMetrics(mailboxes []string) {
	for _, mb := range mailboxes {
		for _, res := range []string{"accepted", "refused"} {
			messagesReceived.WithLabelValues(mb, res)
		}
	}
	delivery.InitMetrics(mailboxes)
}
