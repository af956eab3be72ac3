package relay

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/config/tlstest"
	"github.com/o365relay/o365relay/relay/relaytest"
)

// fakeClock is a settable clock, for the reload's retry and expiry rules.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

type reloadFixture struct {
	cloud *relaytest.Cloud
	clock *fakeClock
	logs  *observer.ObservedLogs
	r     *Relay
	path  string
	cfg   *config.Config
}

func newReloadFixture(t *testing.T) *reloadFixture {
	t.Helper()
	cloud, err := relaytest.New(relaytest.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cloud.Close(); err != nil {
			t.Error(err)
		}
	})
	pem, err := os.ReadFile(cloud.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "app.pem")
	if err := os.WriteFile(path, pem, 0o600); err != nil {
		t.Fatal(err)
	}
	flags := cloud.Settings()
	flags["client_certificate_path"] = path
	flags["listen"] = "127.0.0.1:0"
	flags["admin_listen"] = ""
	flags["spool_dir"] = t.TempDir()
	cfg, err := config.Load(config.Input{Flags: flags})
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.InfoLevel)
	clock := &fakeClock{now: time.Now()}
	r, err := New(cfg, Deps{Logger: zap.New(core), HTTPClient: cloud.HTTPClient(), RootCAs: cloud.CA.Pool(),
		Clock: clock.Now, WatchInterval: time.Hour}) // the test drives the checks itself
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return &reloadFixture{cloud: cloud, clock: clock, logs: logs, r: r, path: path, cfg: cfg}
}

func (f *reloadFixture) write(t *testing.T, data []byte) {
	t.Helper()
	if err := os.WriteFile(f.path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func (f *reloadFixture) check(t *testing.T) {
	t.Helper()
	_, _ = f.r.reloadCertificate(context.Background(), f.path, "", false)
}

func (f *reloadFixture) refusals() int {
	return f.logs.FilterMessage("certificate reload refused; the certificate in use stays in use").Len()
}

func TestReloadRefusesBadCertificatesAndKeepsTheOneInUse(t *testing.T) {
	t.Parallel()
	f := newReloadFixture(t)
	inUse := f.r.tokens.Certificate()
	now := f.clock.Now()
	expired, expiredKey, err := tlstest.SelfSigned("expired", now.Add(-48*time.Hour), now.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	other, otherKey, err := tlstest.SelfSigned("other", now.Add(-time.Hour), now.Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, want string
		data       []byte
	}{
		{"garbage", "client_certificate_path", []byte("not a certificate")},
		{"key mismatch", "does not match", append(tlstest.CertPEM(other), tlstest.PKCS1PEM(expiredKey)...)},
		{"expired", "expired on", append(tlstest.CertPEM(expired), tlstest.PKCS1PEM(expiredKey)...)},
		// Well-formed, but not uploaded to the app registration.
		{"unregistered", "AADSTS700027", append(tlstest.CertPEM(other), tlstest.PKCS1PEM(otherKey)...)},
	}
	for i, c := range cases {
		f.write(t, c.data)
		f.check(t)
		if got := f.refusals(); got != i+1 {
			t.Fatalf("%s: %d refusals logged, want %d", c.name, got, i+1)
		}
		last := f.logs.FilterMessage("certificate reload refused; the certificate in use stays in use").All()[i]
		if e := last.ContextMap()["error"]; !strings.Contains(e.(string), c.want) {
			t.Errorf("%s: refusal %q does not say %q", c.name, e, c.want)
		}
		if f.r.tokens.Certificate() != inUse {
			t.Fatalf("%s: the certificate in use changed", c.name)
		}
	}

	// The watcher does not repeat itself about the same file...
	f.check(t)
	if got := f.refusals(); got != len(cases) {
		t.Errorf("same file: %d refusals logged, want %d", got, len(cases))
	}
	// ...until an Entra refusal is due for a retry (a fresh upload takes
	// a minute or two to propagate): once uploaded, it is taken.
	if err := f.cloud.Entra.RegisterCert(relaytest.ClientID, other); err != nil {
		t.Fatal(err)
	}
	f.check(t)
	if f.r.tokens.Certificate() != inUse {
		t.Fatal("retried before entraRetry passed")
	}
	f.clock.Add(entraRetry + time.Second)
	f.check(t)
	if got := f.r.tokens.Certificate(); got == inUse || got.Leaf.Equal(other) == false {
		t.Fatalf("the uploaded certificate was not taken after the retry interval")
	}
	if f.logs.FilterMessage("certificate reloaded: new certificate in use").Len() != 1 {
		t.Error("no log line for the rotation")
	}
}

func TestReloadReportsWhatNeedsARestart(t *testing.T) {
	t.Parallel()
	f := newReloadFixture(t)
	flags := f.cloud.Settings()
	flags["client_certificate_path"] = f.path
	flags["listen"] = "127.0.0.1:0"
	flags["admin_listen"] = ""
	flags["spool_dir"] = f.cfg.SpoolDir
	flags["max_recipients"] = "10"
	next, err := config.Load(config.Input{Flags: flags})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := f.r.Reload(context.Background(), next)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(rep.RestartNeeded, ",") != "max_recipients" || rep.CertificateNew {
		t.Errorf("report %+v, want max_recipients to need a restart and no new certificate", rep)
	}

	// Switching the kind of credential is refused.
	delete(flags, "client_certificate_path")
	flags["client_secret"] = "s3cr3t"
	next, err = config.Load(config.Input{Flags: flags})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.r.Reload(context.Background(), next); err == nil || !strings.Contains(err.Error(), "restart") {
		t.Errorf("credential kind change: %v", err)
	}
}

func TestExpiryWarningDailyFrom30Days(t *testing.T) {
	t.Parallel()
	f := newReloadFixture(t)
	left := f.r.tokens.Certificate().NotAfter().Sub(f.clock.Now())
	f.clock.Add(left - 29*24*time.Hour)
	f.r.checkExpiry()
	f.r.checkExpiry()
	f.clock.Add(25 * time.Hour)
	f.r.checkExpiry()
	// The warnings are the entries that say how long is left.
	var lefts []time.Duration
	for _, e := range f.logs.FilterLevelExact(zap.WarnLevel).All() {
		if d, ok := e.ContextMap()["left"].(time.Duration); ok {
			lefts = append(lefts, d)
		}
	}
	if len(lefts) != 2 || lefts[0] != 29*24*time.Hour || lefts[1] != 28*24*time.Hour-time.Hour {
		t.Errorf("expiry warnings with time left %v over two days, want one at 29 days and one 25 h later", lefts)
	}
}
