package delivery

import (
	"strings"
	"testing"
	"time"

	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/relay/spool"
)

// withSettings fills in, where a test leaves them zero, what the daemon
// passes from its configuration: config's defaults for
// mailbox_connections, retry_min, retry_max and queue_lifetime, with its
// retry factor and jitter. delivery has no defaults of its own for them.
func withSettings(o Options) Options {
	cfg, err := config.Load(config.Input{})
	if err != nil {
		panic(err)
	}
	if o.Workers == 0 {
		o.Workers = cfg.MailboxConnections
	}
	if o.Backoff == (Backoff{}) {
		o.Backoff = Backoff{Min: cfg.RetryMin, Max: cfg.RetryMax, Factor: config.RetryFactor, Jitter: config.RetryJitter}
	}
	if o.MaxAge == 0 {
		o.MaxAge = cfg.QueueLifetime
	}
	return o
}

// New takes no setting for granted: each missing one is named.
func TestNewRequiresSettings(t *testing.T) {
	t.Parallel()
	sp, err := spool.Open(spool.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := sp.Close(); err != nil {
			t.Error(err)
		}
	}()
	full := withSettings(Options{Spool: sp, Forwarder: &fake{}})
	if _, err := New(full); err != nil {
		t.Fatalf("complete options refused: %v", err)
	}
	for _, tc := range []struct {
		name string
		edit func(*Options)
	}{
		{"Spool", func(o *Options) { o.Spool = nil }},
		{"Forwarder", func(o *Options) { o.Forwarder = nil }},
		{"Workers", func(o *Options) { o.Workers = 0 }},
		{"Backoff.Min (retry_min)", func(o *Options) { o.Backoff = Backoff{} }},
		{"Backoff.Max (retry_max)", func(o *Options) { o.Backoff.Max = o.Backoff.Min - time.Second }},
		{"Backoff.Factor", func(o *Options) { o.Backoff.Factor = 0 }},
		{"Backoff.Jitter", func(o *Options) { o.Backoff.Jitter = 1 }},
		{"MaxAge (queue_lifetime)", func(o *Options) { o.MaxAge = 0 }},
	} {
		o := full
		tc.edit(&o)
		if _, err := New(o); err == nil || !strings.Contains(err.Error(), tc.name) {
			t.Errorf("without %s: New returned %v, want an error naming it", tc.name, err)
		}
	}
}
