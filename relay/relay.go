// Package relay owns the running daemon: it assembles the intake listener,
// the spool, the delivery scheduler, the Exchange Online client, the token
// source and the admin endpoint from a config.Config, and starts and stops
// them in the order that keeps every acknowledged message safe. It is the top
// of the library: only the programs under cmd/ import it, and it names each
// part's logger, once (docs/architecture.md).
//
// Start order: the spool is opened (recovery, quarantine) before the listener
// binds, so no 250 can be given before the queue is usable; both ports are
// bound in New so a taken port stops the daemon at start.
//
// Stop order (SIGTERM): the listener stops accepting and answers 421 4.3.2 to
// new transactions, sessions inside DATA finish up to the shutdown timeout;
// then delivery workers are cancelled (an attempt in flight was recorded before
// it began and is retried after the restart), pooled upstream connections are
// closed, and the spool is closed last.
package relay

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

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
	"github.com/o365relay/o365relay/relay/status"
	"github.com/o365relay/o365relay/relay/upstream"
	"github.com/o365relay/o365relay/token"
)

// Deps are what the daemon takes from outside its configuration; tests and
// the demo inject them, the serve command leaves them zero.
type Deps struct {
	Logger *zap.Logger
	// HTTPClient talks to Entra ID; nil means the token package's default
	// (system roots, which SSL_CERT_FILE extends).
	HTTPClient *http.Client
	// RootCAs verify Exchange Online; nil means the system roots.
	RootCAs *x509.CertPool
	// Clock; nil means time.Now.
	Clock func() time.Time
	// OnReady is called once, when the listener is serving and the spool is
	// open (systemd's READY=1). It does not wait for a token: see ready.go.
	OnReady func()
	// Level, if set, is the logger's level, which Reload changes.
	Level *zap.AtomicLevel
	// WatchInterval is how often the certificate file is checked for a
	// new content; zero means every 5 s.
	WatchInterval time.Duration
}

// Relay is an assembled daemon.
type Relay struct {
	cfg    *config.Config
	log    *zap.Logger
	tokens *token.EntraSource
	up     *upstream.Client
	sp     *spool.Spool
	sched  *delivery.Scheduler
	smtp   *smtpd.Server
	admin  *admin.Server
	ctl    *control.Server // nil when the socket could not be created
	onRdy  func()
	clock  func() time.Time
	level  *zap.AtomicLevel
	every  time.Duration

	listenTLS *listenerTLS // nil without listen_tls_cert (listentls.go)

	build    status.Build
	serving  atomic.Bool // the SMTP listener's Serve is running
	draining atomic.Bool // Run is shutting down

	reloadMu sync.Mutex // one certificate reload at a time
	mu       sync.Mutex // guards watch
	watch    credWatch
}

// New builds every part and binds the listeners. On error everything opened
// so far is closed again. A configuration that lacks what the daemon needs
// is refused with CheckDaemon's error (errors.As finds a *config.Error).
func New(cfg *config.Config, d Deps) (r *Relay, err error) {
	if err := cfg.CheckDaemon(); err != nil {
		return nil, err
	}
	log := d.Logger
	if log == nil {
		log = zap.NewNop()
	}
	clock := d.Clock
	if clock == nil {
		clock = time.Now
	}
	r = &Relay{cfg: cfg, log: log, onRdy: d.OnReady, clock: clock, level: d.Level, every: d.WatchInterval, build: status.ReadBuild()}
	if r.every <= 0 {
		r.every = defaultWatchInterval
	}
	var closers []func() error
	defer func() {
		if err != nil {
			for i := len(closers) - 1; i >= 0; i-- {
				if cerr := closers[i](); cerr != nil {
					log.Warn("closing after a failed start", zap.Error(cerr))
				}
			}
		}
	}()

	cred, err := token.CredentialFromConfig(cfg, log)
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
		Clock:         clock,
		Logger:        log.Named("token"),
	})
	if err != nil {
		return nil, err
	}
	closers = append(closers, r.tokens.Close)
	if c := cred.Certificate; c != nil {
		r.watch.path, r.watch.password = cfg.CertificatePath, cfg.CertificatePassword
		if data, err := os.ReadFile(cfg.CertificatePath); err == nil {
			r.watch.inUse = contentSum(data, []byte(cfg.CertificatePassword.Reveal()))
		}
		certNotAfter.Set(float64(c.NotAfter().Unix()))
		// token.NewSource has just warned about an expiring
		// certificate; the daily reminder starts tomorrow.
		r.watch.lastWarn = clock()
		r.checkExpiry()
	}

	r.up, err = upstream.New(upstream.Options{
		Addr:      cfg.Upstream,
		RootCAs:   d.RootCAs,
		Tokens:    r.tokens,
		HelloName: cfg.Hostname,
		Clock:     clock,
		Logger:    log.Named("upstream"),
		// How many connections a mailbox may have at once is the
		// scheduler's (Limits.Connections below), not the pool's.
	})
	if err != nil {
		return nil, err
	}
	closers = append(closers, r.up.Close)

	r.sp, err = spool.Open(spool.Options{
		Dir:      cfg.SpoolDir,
		Fsync:    true,
		MaxItems: cfg.SpoolMaxItems,
		MaxBytes: cfg.SpoolMaxBytes,
		Clock:    clock,
		Logger:   log.Named("spool"),
	})
	if err != nil {
		return nil, fmt.Errorf("spool_dir %s: %w (set O365RELAY_SPOOL_DIR to a directory this user can write)", cfg.SpoolDir, err)
	}
	closers = append(closers, r.sp.Close)

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
		Backoff: delivery.Backoff{Min: cfg.RetryMin, Max: cfg.RetryMax, Factor: 2, Jitter: 0.2},
		Clock:   clock,
		Logger:  log.Named("delivery"),
	})
	if err != nil {
		return nil, err
	}

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
		Logger:                  log.Named("smtpd"),
		Clock:                   clock,
		OnRefused:               func(reason string) { connectionsRefused.WithLabelValues(reason).Inc() },
	})
	if err != nil {
		return nil, err
	}
	if err := r.smtp.Listen(); err != nil {
		return nil, fmt.Errorf("listen (O365RELAY_LISTEN): %w", err)
	}
	closers = append(closers, func() error { return r.smtp.Shutdown(context.Background()) })

	// The control socket, once the spool's lock is held (no other daemon
	// serves this spool). Without it the relay still relays: a file system
	// that has no Unix sockets must not stop the mail; `o365relay queue`
	// then says the daemon cannot be reached.
	if r.ctl, err = control.Listen(control.SocketPath(cfg.SpoolDir), control.Daemon{
		Admin:  &control.SpoolAdmin{Spool: r.sp, Retried: r.sched.Retried, Deleted: r.sched.Deleted},
		Status: r.Status,
	}, log.Named("control")); err != nil {
		log.Warn("no control socket: 'o365relay queue' and 'o365relay status' cannot reach this daemon", zap.Error(err))
		r.ctl, err = nil, nil
	} else {
		closers = append(closers, func() error { return r.ctl.Shutdown(context.Background()) })
	}

	initMailboxMetrics(cfg.Mailboxes())
	if cfg.AdminListen != "" {
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
		r.admin, err = admin.New(admin.Options{
			Addr:       cfg.AdminListen,
			Collectors: cs,
			Ready:      ready,
			Status:     func(ctx context.Context) any { return r.Status(ctx) },
			Logger:     log.Named("admin"),
		})
		if err != nil {
			return nil, err
		}
		if err := r.admin.Listen(); err != nil {
			return nil, fmt.Errorf("admin_listen (O365RELAY_ADMIN_LISTEN): %w", err)
		}
	}
	return r, nil
}

// SMTPAddr is the bound SMTP address.
func (r *Relay) SMTPAddr() net.Addr { return r.smtp.Addr() }

// Spool returns the spool.
func (r *Relay) Spool() *spool.Spool { return r.sp }

// Run serves until ctx is done, then shuts down in order. It returns nil
// after a clean shutdown.
func (r *Relay) Run(ctx context.Context) error {
	log := r.log
	workCtx, stopWork := context.WithCancel(context.Background())
	defer stopWork()

	var wg sync.WaitGroup
	errc := make(chan error, 4)
	goFn := func(name string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	goFn("token", func() error { return r.tokens.Run(workCtx) })
	if r.tokens.Certificate() != nil || r.listenTLS != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.watchFiles(workCtx, r.every)
		}()
	}
	goFn("delivery", func() error { return r.sched.Run(workCtx) })
	goFn("smtp listener", r.smtp.Serve)
	r.serving.Store(true) // bound in New: connections wait in the backlog until Serve accepts
	if r.admin != nil {
		goFn("admin listener", r.admin.Serve)
	}
	if r.ctl != nil {
		goFn("control socket", r.ctl.Serve)
	}
	log.Info("listening", zap.Stringer("smtp", r.smtp.Addr()), zap.String("admin", r.cfg.AdminListen),
		zap.String("upstream", r.cfg.Upstream), zap.String("mailbox", r.cfg.Mailbox), zap.String("ack", r.cfg.Ack))

	// Started: the listener serves and the spool is open, so mail handed
	// over is safe. No wait for a token (ready.go); whether the spool has
	// room is readiness, which changes over time and is reported by
	// /readyz and STATUS=, while systemd's READY=1 is sent once: waiting
	// for room here would fail the start of a relay whose backlog only
	// its own delivery can drain.
	if rd := r.Readiness(ctx); rd.OK {
		log.Info("ready: listener serving, spool writable")
	} else {
		log.Warn("started but not ready", zap.Any("checks", rd.Checks))
	}
	if r.onRdy != nil {
		r.onRdy()
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		log.Error("a part of the relay stopped; shutting down", zap.Error(runErr))
	}
	r.draining.Store(true)
	log.Info("shutting down", zap.Duration("timeout", r.cfg.ShutdownTimeout))
	sctx, cancel := context.WithTimeout(context.Background(), r.cfg.ShutdownTimeout)
	defer cancel()
	var errs []error
	if err := r.smtp.Shutdown(sctx); err != nil {
		errs = append(errs, err)
	}
	r.serving.Store(false)
	stopWork()
	if r.admin != nil {
		if err := r.admin.Shutdown(sctx); err != nil {
			errs = append(errs, err)
		}
	}
	if r.ctl != nil {
		if err := r.ctl.Shutdown(sctx); err != nil {
			errs = append(errs, fmt.Errorf("control socket: %w", err))
		}
	}
	wg.Wait()
	close(errc)
	for err := range errc { // runErr, if any, was taken from errc already
		errs = append(errs, err)
	}
	if err := r.up.Close(); err != nil {
		errs = append(errs, fmt.Errorf("upstream: %w", err))
	}
	if err := r.tokens.Close(); err != nil {
		errs = append(errs, fmt.Errorf("token: %w", err))
	}
	if err := r.sp.Close(); err != nil {
		errs = append(errs, fmt.Errorf("spool: %w", err))
	}
	if runErr != nil {
		errs = append([]error{runErr}, errs...)
	}
	if len(errs) == 0 {
		log.Info("stopped")
	}
	return errors.Join(errs...)
}
