package relay

import (
	"context"
	"fmt"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/relay/admin"
	"github.com/o365relay/o365relay/relay/control"
	"github.com/o365relay/o365relay/relay/delivery"
	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/rewrite"
	"github.com/o365relay/o365relay/relay/smtpd"
	"github.com/o365relay/o365relay/relay/spool"
	"github.com/o365relay/o365relay/relay/upstream"
	"github.com/o365relay/o365relay/token"
)

// The parts of the daemon, built by New in this order from r.cfg. Each
// returns what closes it after a failed start (nil: nothing to close).

// newTokens builds the token source from the configured credential and,
// for a certificate, the state its watcher starts from.
func (r *Relay) newTokens(d Deps) (func() error, error) {
	cfg := r.cfg
	cred, err := token.CredentialFromConfig(cfg, r.log)
	if err != nil {
		return nil, err
	}
	r.tokens, err = token.NewSource(token.Options{
		AuthorityHost: cfg.AuthorityHost,
		TenantID:      cfg.TenantID,
		ClientID:      cfg.ClientID,
		Scope:         cfg.Scope,
		Credential:    cred,
		HTTPClient:    d.HTTPClient,
		Clock:         r.clock,
		Logger:        r.log.Named("token"),
	})
	if err != nil {
		return nil, err
	}
	if c := cred.Certificate; c != nil {
		r.watch.path, r.watch.password = cfg.CertificatePath, cfg.CertificatePassword
		if data, err := os.ReadFile(cfg.CertificatePath); err == nil {
			r.watch.inUse = contentSum(data, []byte(cfg.CertificatePassword.Reveal()))
		}
		certNotAfter.Set(float64(c.NotAfter().Unix()))
		// token.NewSource has just warned about an expiring
		// certificate; the daily reminder starts tomorrow.
		r.watch.lastWarn = r.clock()
		r.checkExpiry()
	}
	return r.tokens.Close, nil
}

// newUpstream builds the Exchange Online client.
func (r *Relay) newUpstream(d Deps) (func() error, error) {
	var err error
	r.up, err = upstream.New(upstream.Options{
		Addr:      r.cfg.Upstream,
		RootCAs:   d.RootCAs,
		Tokens:    r.tokens,
		HelloName: r.cfg.Hostname,
		Clock:     r.clock,
		Logger:    r.log.Named("upstream"),
		// How many connections a mailbox may have at once is the
		// scheduler's (Limits.Connections in newScheduler), not the pool's.
	})
	if err != nil {
		return nil, err
	}
	return r.up.Close, nil
}

// openSpool opens (and recovers) the spool before any listener binds.
func (r *Relay) openSpool(Deps) (func() error, error) {
	var err error
	r.sp, err = spool.Open(spool.Options{
		Dir:      r.cfg.SpoolDir,
		Fsync:    true,
		MaxItems: r.cfg.SpoolMaxItems,
		MaxBytes: r.cfg.SpoolMaxBytes,
		Clock:    r.clock,
		Logger:   r.log.Named("spool"),
	})
	if err != nil {
		return nil, fmt.Errorf("spool_dir %s: %w (set O365RELAY_SPOOL_DIR to a directory this user can write)", r.cfg.SpoolDir, err)
	}
	return r.sp.Close, nil
}

// newScheduler builds the delivery scheduler (Run starts it).
func (r *Relay) newScheduler(Deps) (func() error, error) {
	cfg := r.cfg
	var err error
	r.sched, err = delivery.New(delivery.Options{
		Spool:     r.sp,
		Forwarder: r.up,
		// Enough workers for every mailbox's connections to be busy.
		Workers: cfg.TotalConnections(),
		MaxAge:  cfg.QueueLifetime,
		Limits: func(mb string) delivery.Limits {
			l := cfg.Limits(mb)
			return delivery.Limits{Rate: l.Rate, DailyRecipients: l.DailyRecipients, Connections: l.Connections}
		},
		Rewrite: func(env *envelope.Envelope) rewrite.Mode { return rewriteMode(cfg.RewriteFor(env.From)) },
		Backoff: delivery.Backoff{Min: cfg.RetryMin, Max: cfg.RetryMax, Factor: config.RetryFactor, Jitter: config.RetryJitter},
		Clock:   r.clock,
		Logger:  r.log.Named("delivery"),
	})
	return nil, err
}

// bindSMTP builds the intake listener and binds its ports, so a taken
// port stops the daemon at start.
func (r *Relay) bindSMTP(Deps) (func() error, error) {
	cfg := r.cfg
	le := smtpd.RejectBareLineEndings
	if cfg.LineEndings == "normalize" {
		le = smtpd.NormalizeBareLineEndings
	}
	tlsConfig, localAuth, err := r.listenerSecurity(cfg)
	if err != nil {
		return nil, err
	}
	r.smtp, err = smtpd.New(smtpd.Options{
		Addr:            cfg.Listen,
		ImplicitTLSAddr: cfg.ListenTLS,
		TLSConfig:       tlsConfig,
		Auth:            localAuth,
		AllowedNetworks: cfg.AllowedNetworks,
		Hostname:        cfg.Hostname,
		Sink:            &sink{spool: r.sp, sched: r.sched, mode: AckMode(cfg.Ack)},
		// Sender rules (config senders); 550 5.7.1 for a sender none matches.
		Route: cfg.Route,
		// A From: rewrite must be able to read the header section:
		// refused at intake otherwise.
		Rewrite:                 func(sender string) rewrite.Mode { return rewriteMode(cfg.RewriteFor(sender)) },
		MaxMessageBytes:         cfg.MaxMessageBytes,
		MaxRecipients:           cfg.MaxRecipients,
		MaxConnections:          cfg.MaxConnections,
		MaxConnectionsPerClient: cfg.MaxConnectionsPerClient,
		LineEndings:             le,
		Logger:                  r.log.Named("smtpd"),
		Clock:                   r.clock,
		OnRefused:               func(reason string) { connectionsRefused.WithLabelValues(reason).Inc() },
	})
	if err != nil {
		return nil, err
	}
	if err := r.smtp.Listen(); err != nil {
		return nil, fmt.Errorf("listen (O365RELAY_LISTEN): %w", err)
	}
	return func() error { return r.smtp.Shutdown(context.Background()) }, nil
}

// bindControl creates the control socket, once the spool's lock is held
// (no other daemon serves this spool). Without it the relay still relays:
// a file system that has no Unix sockets must not stop the mail;
// `o365relay queue` then says the daemon cannot be reached.
func (r *Relay) bindControl(Deps) (func() error, error) {
	var err error
	if r.ctl, err = control.Listen(control.SocketPath(r.cfg.SpoolDir), control.Daemon{
		Admin:  &control.SpoolAdmin{Spool: r.sp, Retried: r.sched.Retried, Deleted: r.sched.Deleted},
		Status: r.Status,
	}, r.log.Named("control")); err != nil {
		r.log.Warn("no control socket: 'o365relay queue' and 'o365relay status' cannot reach this daemon", zap.Error(err))
		r.ctl = nil
		return nil, nil
	}
	return func() error { return r.ctl.Shutdown(context.Background()) }, nil
}

// bindAdmin creates every configured mailbox's metric series and, unless
// admin_listen is empty, binds the admin endpoint.
func (r *Relay) bindAdmin(Deps) (func() error, error) {
	initMailboxMetrics(r.cfg.Mailboxes())
	if r.cfg.AdminListen == "" {
		return nil, nil
	}
	cs := r.collectors()
	smtp := r.smtp
	cs = append(cs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "o365relay_smtp_connections_open",
		Help: "Client connections being served now (refused ones not counted).",
	}, func() float64 { return float64(smtp.OpenConnections()) }))
	ready := map[string]admin.Check{}
	for _, c := range r.readyChecks() {
		ready[c.name] = c.fn
	}
	var err error
	r.admin, err = admin.New(admin.Options{
		Addr:       r.cfg.AdminListen,
		Collectors: cs,
		Ready:      ready,
		Status:     func(ctx context.Context) any { return r.Status(ctx) },
		Logger:     r.log.Named("admin"),
	})
	if err != nil {
		return nil, err
	}
	if err := r.admin.Listen(); err != nil {
		return nil, fmt.Errorf("admin_listen (O365RELAY_ADMIN_LISTEN): %w", err)
	}
	return nil, nil
}
