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
	"crypto/x509"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/relay/admin"
	"github.com/o365relay/o365relay/relay/control"
	"github.com/o365relay/o365relay/relay/delivery"
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
	// WatchInterval is how often the certificate files are checked for a
	// new content; zero means defaultWatchInterval (reload.go), which is
	// the daemon's: the interval is not a setting, tests shorten or
	// lengthen it.
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
	// In the start order of the package comment; each part returns what
	// closes it again (nil: nothing to close).
	for _, part := range []func(Deps) (func() error, error){
		r.newTokens, r.newUpstream, r.openSpool, r.newScheduler, r.bindSMTP, r.bindControl, r.bindAdmin,
	} {
		closer, err := part(d)
		if err != nil {
			return nil, err
		}
		if closer != nil {
			closers = append(closers, closer)
		}
	}
	return r, nil
}

// SMTPAddr is the bound SMTP address.
func (r *Relay) SMTPAddr() net.Addr { return r.smtp.Addr() }

// Spool returns the spool.
func (r *Relay) Spool() *spool.Spool { return r.sp }
