// Package delivery owns the retry policy: workers that drain the spool to
// Exchange Online, decide per recipient what a reply means (deliver, retry,
// fail), and hold a mailbox whose path, configuration or quota makes every
// attempt fail, so the queue is neither bounced nor hammered. It also paces
// each mailbox to Exchange's limits (Limits: messages per minute,
// recipients per rolling day) and applies a sender rule's rewrite
// (Options.Rewrite) as the message is read from the spool, so the spool
// keeps what the application sent.
//
// What each reply does to the message and the mailbox is
// docs/exchange.md#replies and docs/delivery-failures.md; how an attempt
// runs (the due queue, parking, noting the attempt first, panics) is
// docs/delivery-failures.md#how-an-attempt-runs.
package delivery

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/rewrite"
	"github.com/o365relay/o365relay/relay/spool"
)

// Forwarder sends one message upstream (relay/upstream implements it).
type Forwarder interface {
	Deliver(ctx context.Context, env *envelope.Envelope, body io.Reader) (*envelope.Result, error)
}

// Backoff is an exponential retry schedule with jitter.
type Backoff struct {
	Min, Max time.Duration
	Factor   float64
	Jitter   float64 // fraction, e.g. 0.2 for ±20%
}

// Options configure a Scheduler. What the daemon's configuration decides
// is required (New names what is missing): delivery has no defaults of its
// own for settings, config owns them. Injected dependencies left nil are
// the real ones; internal limits left zero take the constants below.
type Options struct {
	Spool     *spool.Spool
	Forwarder Forwarder
	// Workers is how many attempts run at once (the daemon: every
	// mailbox's connections, config's TotalConnections); at least 1.
	Workers int
	// Backoff is the retry schedule: retry_min, retry_max, and config's
	// RetryFactor (≥ 1) and RetryJitter (in [0, 1)).
	Backoff Backoff
	// MaxAge is queue_lifetime: a message not delivered by then fails.
	MaxAge time.Duration
	Clock  func() time.Time // default time.Now
	// After returns a channel that fires after d (default time.After); tests
	// inject one driven by their clock.
	After  func(d time.Duration) <-chan time.Time
	Logger *zap.Logger    // used as given; the caller names it (relay.New: "delivery"); default none
	Rand   func() float64 // in [0,1); default math/rand/v2
	// RescanEvery is how often queue/ is rescanned for CLI changes
	// (default rescanEvery).
	RescanEvery time.Duration
	// RestoreAfter is how long after a 432 4.3.2 a lowered connection
	// limit grows back by one (default restoreAfter).
	RestoreAfter time.Duration
	// ContinuousErrors is how many consecutive permanent failures mark a
	// mailbox unhealthy (default continuousErrors).
	ContinuousErrors int
	// AttemptTimeout bounds one attempt (default attemptTimeout).
	AttemptTimeout time.Duration
	// Limits gives a mailbox's pacing limits; nil paces nothing (the daemon
	// passes the configured ones).
	Limits func(mailbox string) Limits
	// Rewrite says how the sender rule of a message rewrites it on the way
	// out; nil rewrites nothing. It is asked at every attempt, so a changed
	// rule applies to queued mail too.
	Rewrite func(env *envelope.Envelope) rewrite.Mode
}

// Internal limits: not settings, fixed by what they guard against.
const (
	// rescanEvery: a change to queue/ made outside the daemon is
	// noticed within half a minute.
	rescanEvery = 30 * time.Second
	// restoreAfter: a connection limit a 432 4.3.2 lowered grows back by
	// one a minute (docs/exchange.md#432-432-concurrent-connections).
	restoreAfter = time.Minute
	// continuousErrors: five equal permanent errors in a row hold the
	// mailbox, well before Exchange's continuous-error throttling
	// (docs/exchange.md#550-5225x-throttled-sender).
	continuousErrors = 5
	// attemptTimeout bounds one attempt: a 150 MB body at a modest
	// 2 Mbit/s still fits in ten minutes.
	attemptTimeout = 10 * time.Minute
)

// Scheduler drives delivery of the spool.
type Scheduler struct {
	o   Options
	sp  *spool.Spool
	log *zap.Logger

	mu      sync.Mutex
	due     *dueQueue // messages waiting for their next attempt
	running map[envelope.ID]*run
	parked  map[envelope.ID]time.Time // found every slot busy; when they were due
	boxes   map[string]*mailbox
	pacers  map[string]*pacer
	slots   map[string]*slots    // by lower-case mailbox
	early   map[envelope.ID]bool // due again at release (a slot freed meanwhile)
	panics  map[envelope.ID]int  // panics outside the forwarder, by message
	wake    chan struct{}        // closed and replaced when the earliest due time moves earlier
}

// run is an attempt in progress.
type run struct {
	done chan struct{} // closed at release
	at   time.Time     // when the message was due
}

// New checks opts: a missing or out-of-range setting is an error naming
// it.
func New(opts Options) (*Scheduler, error) {
	if err := opts.check(); err != nil {
		return nil, err
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.After == nil {
		opts.After = time.After
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Rand == nil {
		opts.Rand = rand.Float64
	}
	if opts.RescanEvery <= 0 {
		opts.RescanEvery = rescanEvery
	}
	if opts.RestoreAfter <= 0 {
		opts.RestoreAfter = restoreAfter
	}
	if opts.AttemptTimeout <= 0 {
		opts.AttemptTimeout = attemptTimeout
	}
	if opts.ContinuousErrors <= 0 {
		opts.ContinuousErrors = continuousErrors
	}
	return &Scheduler{
		o: opts, sp: opts.Spool, log: opts.Logger,
		due: newDueQueue(), running: map[envelope.ID]*run{}, parked: map[envelope.ID]time.Time{},
		boxes: map[string]*mailbox{}, pacers: map[string]*pacer{}, panics: map[envelope.ID]int{},
		slots: map[string]*slots{}, early: map[envelope.ID]bool{},
		wake: make(chan struct{}),
	}, nil
}

// check names every required option that is missing or out of range.
func (o *Options) check() error {
	var bad []string
	for _, c := range []struct {
		ok   bool
		what string
	}{
		{o.Spool != nil, "Spool is required"},
		{o.Forwarder != nil, "Forwarder is required"},
		{o.Workers > 0, "Workers must be at least 1"},
		{o.Backoff.Min > 0, "Backoff.Min (retry_min) must be positive"},
		{o.Backoff.Max >= o.Backoff.Min, "Backoff.Max (retry_max) must be at least Backoff.Min"},
		{o.Backoff.Factor >= 1, "Backoff.Factor must be at least 1"},
		{o.Backoff.Jitter >= 0 && o.Backoff.Jitter < 1, "Backoff.Jitter must be in [0, 1)"},
		{o.MaxAge > 0, "MaxAge (queue_lifetime) must be positive"},
	} {
		if !c.ok {
			bad = append(bad, c.what)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("delivery: %s", strings.Join(bad, "; "))
	}
	return nil
}

// backoff returns the delay after the n-th attempt (n ≥ 1).
func (s *Scheduler) backoff(n int) time.Duration {
	b := s.o.Backoff
	d := float64(b.Min) * math.Pow(b.Factor, float64(n-1))
	if d > float64(b.Max) || math.IsInf(d, 0) {
		d = float64(b.Max)
	}
	d *= 1 + b.Jitter*(2*s.o.Rand()-1)
	return time.Duration(d)
}
