package relay

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/config/secret"
	"github.com/o365relay/o365relay/token"
)

// Reloading without downtime (SIGHUP, or a certificate file whose content
// changed): what is applied and what waits for a restart, and why, is
// docs/operations.md#reloading-without-downtime.

// defaultWatchInterval is how often the certificate file is re-read. The
// file is a few KiB; hashing it is cheaper than reasoning about inotify and
// symlink swaps, and a rotation is picked up within seconds.
const defaultWatchInterval = 5 * time.Second

// entraRetry is how long a certificate Entra refused waits before it is
// tried again: a fresh upload takes a minute or two to propagate
// (docs/entra.md#certificate-rotation), and AADSTS50196 punishes tight loops.
const entraRetry = time.Minute

// credWatch is the reloadable state, owned by the Relay (guarded by
// Relay.mu).
type credWatch struct {
	path     string
	password secret.Secret
	inUse    [sha256.Size]byte
	// refused is the content last refused and, for an Entra refusal,
	// when to try it again (zero: it does not parse, wait for a change).
	refused      [sha256.Size]byte
	refusedRetry time.Time
	lastWarn     time.Time // of the expiry warning, once a day
}

// ReloadReport says what a Reload did.
type ReloadReport struct {
	Applied        []string // keys applied now
	RestartNeeded  []string // keys that changed but apply at the next restart
	CertificateNew bool     // a different certificate is in use now
}

// Reload applies a re-read configuration (see the comment above). An error
// means nothing was applied and the running configuration stays.
func (r *Relay) Reload(ctx context.Context, cfg *config.Config) (ReloadReport, error) {
	var rep ReloadReport
	if err := cfg.CheckDaemon(); err != nil {
		return rep, err
	}
	// r.cfg stays the start-up configuration: keys that need a restart are
	// compared against what is really running.
	old := r.cfg
	if cfg.Credential() != old.Credential() {
		return rep, fmt.Errorf("the kind of credential changed (%s → %s); restart the relay to switch", old.Credential(), cfg.Credential())
	}
	var lvl zapcore.Level
	if r.level != nil {
		var err error
		if lvl, err = zapcore.ParseLevel(cfg.LogLevel); err != nil {
			return rep, fmt.Errorf("log_level: %w", err)
		}
	}
	if cfg.Credential() == "certificate" {
		changed, err := r.reloadCertificate(ctx, cfg.CertificatePath, cfg.CertificatePassword, true)
		if err != nil {
			return rep, err
		}
		rep.CertificateNew = changed
		rep.Applied = append(rep.Applied, "client_certificate_path", "client_certificate_password")
	}
	if r.listenTLS != nil {
		// The listener's certificate files, re-read now rather than at
		// the next watch tick (their paths apply at the next restart).
		if _, err := r.listenTLS.reload(); err != nil {
			r.log.Error("listener certificate reload refused; the certificate in use stays in use", zap.Error(err))
		}
	}
	if r.level != nil {
		rep.Applied = append(rep.Applied, "log_level")
	}
	applied := map[string]bool{}
	for _, k := range rep.Applied {
		applied[k] = true
	}
	was, now := old.Effective(), cfg.Effective()
	for k, v := range now {
		if !applied[k] && settingValue(v) != settingValue(was[k]) {
			rep.RestartNeeded = append(rep.RestartNeeded, k)
		}
	}
	sort.Strings(rep.RestartNeeded)
	r.log.Info("configuration reloaded", zap.Strings("applied", rep.Applied),
		zap.Bool("new_certificate", rep.CertificateNew), zap.Strings("takes_effect_at_next_restart", rep.RestartNeeded))
	// Last, so the line above is written even when the new level is
	// higher.
	if r.level != nil {
		r.level.SetLevel(lvl)
	}
	return rep, nil
}

// settingValue strips the " (source)" that Config.Effective appends.
func settingValue(v string) string {
	if i := strings.LastIndex(v, " ("); i >= 0 {
		return v[:i]
	}
	return v
}

// watchFiles re-reads the files the relay can reload — the Entra certificate and
// the listener's certificate, whichever are configured — every interval
// until ctx is done, and warns daily about an expiring Entra certificate.
// One goroutine for both: they share the interval and the rule (content
// hash, a bad file refused and the one in use kept).
func (r *Relay) watchFiles(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	lastListenerErr := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if r.tokens.Certificate() != nil {
			r.mu.Lock()
			path, pw := r.watch.path, r.watch.password
			r.mu.Unlock()
			// Errors are logged and counted inside; the watcher carries on.
			_, _ = r.reloadCertificate(ctx, path, pw, false)
			r.checkExpiry()
		}
		if r.listenTLS != nil {
			lastListenerErr = r.checkListenerTLS(lastListenerErr)
		}
	}
}

// reloadCertificate loads the certificate at path and, if its content
// differs from the one in use, rotates to it. forced (SIGHUP) retries a
// content refused before and returns the reason; the watcher (forced false)
// stays quiet about a content it has already refused.
func (r *Relay) reloadCertificate(ctx context.Context, path string, password secret.Secret, forced bool) (bool, error) {
	// One reload at a time: SIGHUP and the watcher must not rotate twice.
	r.reloadMu.Lock()
	defer r.reloadMu.Unlock()
	data, err := os.ReadFile(path)
	if err != nil {
		err = fmt.Errorf("client_certificate_path %s: %w", path, err)
		// Keyed by the error, so a file that stays missing is
		// reported once, not every interval.
		return false, r.refuse(path, sha256.Sum256([]byte(err.Error())), false, forced, err)
	}
	sum := contentSum(data, []byte(password.Reveal()))
	now := r.clock()
	r.mu.Lock()
	w := r.watch
	r.mu.Unlock()
	if sum == w.inUse && path == w.path {
		return false, nil
	}
	if !forced && sum == w.refused && (w.refusedRetry.IsZero() || now.Before(w.refusedRetry)) {
		return false, nil
	}
	cert, err := token.LoadCertificate(path, password)
	if err != nil {
		return false, r.refuse(path, sum, false, forced, fmt.Errorf("client_certificate_path %s: %w", path, err))
	}
	if now.After(cert.NotAfter()) {
		return false, r.refuse(path, sum, false, forced,
			fmt.Errorf("client_certificate_path %s: the certificate expired on %s (%s)", path, cert.NotAfter().Format(time.DateOnly), cert))
	}
	if now.Before(cert.NotBefore()) {
		return false, r.refuse(path, sum, false, forced,
			fmt.Errorf("client_certificate_path %s: the certificate is not valid before %s (%s)", path, cert.NotBefore().Format(time.RFC3339), cert))
	}
	token.WarnKeyPermissions(path, r.log)
	prev := r.tokens.Certificate()
	if err := r.tokens.RotateCertificate(ctx, cert); err != nil {
		return false, r.refuse(path, sum, true, forced,
			fmt.Errorf("Entra ID did not accept the new certificate %s: %w", cert, err))
	}
	r.mu.Lock()
	r.watch.path, r.watch.password, r.watch.inUse = path, password, sum
	r.watch.refused, r.watch.refusedRetry = [sha256.Size]byte{}, time.Time{}
	r.mu.Unlock()
	changed := prev == nil || prev.ThumbprintSHA256() != cert.ThumbprintSHA256()
	credentialReloads.WithLabelValues("success").Inc()
	certNotAfter.Set(float64(cert.NotAfter().Unix()))
	if changed {
		r.log.Info("certificate reloaded: new certificate in use", zap.Stringer("certificate", cert),
			zap.String("previous_thumbprint", thumbprint(prev)))
	}
	r.checkExpiry()
	return changed, nil
}

// refuse records and logs a certificate that cannot be used; the one in
// use stays. entra marks an Entra refusal, which is retried later.
func (r *Relay) refuse(path string, sum [sha256.Size]byte, entra, forced bool, err error) error {
	r.mu.Lock()
	repeat := sum == r.watch.refused
	r.watch.refused, r.watch.refusedRetry = sum, time.Time{}
	if entra {
		r.watch.refusedRetry = r.clock().Add(entraRetry)
	}
	r.mu.Unlock()
	if repeat && !forced && !entra {
		return err // reported when it first appeared
	}
	reason := "invalid"
	if entra {
		reason = "refused_by_entra"
	}
	credentialReloads.WithLabelValues(reason).Inc()
	r.log.Error("certificate reload refused; the certificate in use stays in use",
		zap.String("path", path), zap.Error(err), zap.String("in_use_thumbprint", thumbprint(r.tokens.Certificate())))
	return err
}

// checkExpiry updates the expiry metric and warns once a day from 30 days
// before the certificate in use expires.
func (r *Relay) checkExpiry() {
	c := r.tokens.Certificate()
	if c == nil {
		return
	}
	now := r.clock()
	left := c.NotAfter().Sub(now)
	soon := left < 30*24*time.Hour
	if soon {
		certExpiring.Set(1)
	} else {
		certExpiring.Set(0)
	}
	r.mu.Lock()
	due := soon && now.Sub(r.watch.lastWarn) >= 24*time.Hour
	if due {
		r.watch.lastWarn = now
	}
	r.mu.Unlock()
	if due {
		r.log.Warn("the certificate in use expires soon: upload its successor to the app registration, then replace the file (the relay picks it up without a restart)",
			zap.Stringer("certificate", c), zap.Duration("left", left.Round(time.Hour)))
	}
}

func thumbprint(c *token.Certificate) string {
	if c == nil {
		return ""
	}
	return c.ThumbprintSHA1Hex()
}

// contentSum identifies what a reload would load: the files' contents (and
// the password that opens them), each part ended by a NUL.
func contentSum(parts ...[]byte) [sha256.Size]byte {
	h := sha256.New()
	for _, p := range parts {
		h.Write(p)
		h.Write([]byte{0})
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}
