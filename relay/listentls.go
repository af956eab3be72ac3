package relay

import (
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/relay/smtpd"
)

// Listener TLS and local AUTH (config listen_tls_cert, listen_tls_key,
// listen_tls, auth_users). The listener's certificate is re-read from disk
// like the Entra certificate (reload.go): a changed pair is served from the
// next handshake on, one that does not load is refused and the pair in use
// stays (docs/operations.md#reloading-without-downtime).

// listenerTLS holds the certificate the listener serves.
type listenerTLS struct {
	certPath, keyPath string
	log               *zap.Logger
	cur               atomic.Pointer[tls.Config]

	mu      sync.Mutex // one reload at a time
	inUse   [sha256.Size]byte
	refused [sha256.Size]byte
}

// listenerSecurity builds the listener's TLS getter and Authenticator from
// the configuration; both nil when not configured (config.check has made
// sure AUTH never comes without TLS).
func (r *Relay) listenerSecurity(cfg *config.Config) (func() *tls.Config, smtpd.Authenticator, error) {
	if cfg.ListenTLSCert == "" {
		return nil, nil, nil
	}
	lt := &listenerTLS{certPath: cfg.ListenTLSCert, keyPath: cfg.ListenTLSKey, log: r.log.Named("smtpd")}
	if _, err := lt.reload(); err != nil {
		return nil, nil, fmt.Errorf("listen_tls_cert (O365RELAY_LISTEN_TLS_CERT): %w", err)
	}
	r.listenTLS = lt
	if len(cfg.AuthUsers) == 0 {
		return lt.cur.Load, nil, nil
	}
	users := make([]smtpd.User, 0, len(cfg.AuthUsers))
	for _, u := range cfg.AuthUsers {
		users = append(users, smtpd.User{Name: u.User, Hash: []byte(u.PasswordBcrypt.Reveal()), Senders: u.Senders})
	}
	auth, err := smtpd.NewUsers(users)
	if err != nil {
		return nil, nil, fmt.Errorf("auth_users: %w", err)
	}
	return lt.cur.Load, auth, nil
}

// reload loads the pair if its content changed; it reports whether a new
// certificate is in use.
func (l *listenerTLS) reload() (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	certPEM, err := os.ReadFile(l.certPath)
	if err != nil {
		return false, err
	}
	keyPEM, err := os.ReadFile(l.keyPath)
	if err != nil {
		return false, fmt.Errorf("listen_tls_key: %w", err)
	}
	sum := contentSum(certPEM, keyPEM)
	if sum == l.inUse || sum == l.refused {
		return false, nil
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		l.refused = sum
		// crypto/tls's error names the problem, never key bytes.
		return false, fmt.Errorf("%s and %s do not load as a certificate and its key: %w", l.certPath, l.keyPath, err)
	}
	if pair.Leaf == nil {
		return false, errors.New("no certificate")
	}
	l.cur.Store(&tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12})
	l.inUse, l.refused = sum, [sha256.Size]byte{}
	l.log.Info("listener certificate loaded", zap.String("path", l.certPath),
		zap.String("subject", pair.Leaf.Subject.String()), zap.String("serial", pair.Leaf.SerialNumber.String()),
		zap.Time("not_after", pair.Leaf.NotAfter))
	if time.Now().After(pair.Leaf.NotAfter) {
		l.log.Warn("the listener certificate has expired; clients that verify it will refuse TLS", zap.String("path", l.certPath))
	}
	return true, nil
}

// checkListenerTLS re-reads the listener's certificate (for the watcher)
// and logs a refusal once per problem, not every interval; it returns the
// problem to pass in next time.
func (r *Relay) checkListenerTLS(last string) string {
	_, err := r.listenTLS.reload()
	if err == nil {
		return ""
	}
	if err.Error() != last {
		r.listenTLS.log.Error("listener certificate reload refused; the certificate in use stays in use",
			zap.String("path", r.listenTLS.certPath), zap.Error(err))
	}
	return err.Error()
}
