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
	"errors"
	"io"
	"math"
	"math/rand/v2"
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

// Options configure a Scheduler. Zero values take the defaults noted.
type Options struct {
	Spool     *spool.Spool
	Forwarder Forwarder
	Workers   int           // default 3: Exchange allows 3 connections per mailbox (docs/exchange.md#connections-per-mailbox)
	Backoff   Backoff       // default {1m, 30m, 2, 0.2}
	MaxAge    time.Duration // default 120h, Postfix's maximal_queue_lifetime
	Clock     func() time.Time
	// After returns a channel that fires after d (default time.After); tests
	// inject one driven by their clock.
	After  func(d time.Duration) <-chan time.Time
	Logger *zap.Logger    // used as given; the caller names it (relay.New: "delivery")
	Rand   func() float64 // in [0,1); default math/rand/v2
	// RescanEvery is how often queue/ is rescanned for CLI changes (default 30s).
	RescanEvery time.Duration
	// RestoreAfter is how long after a 432 4.3.2 a lowered connection
	// limit grows back by one (default 1 min).
	RestoreAfter time.Duration
	// ContinuousErrors is how many consecutive permanent failures mark a
	// mailbox unhealthy (default 5).
	ContinuousErrors int
	// AttemptTimeout bounds one attempt (default 10 min: a 150 MB body at
	// a modest 2 Mbit/s still fits).
	AttemptTimeout time.Duration
	// Limits gives a mailbox's pacing limits; nil paces nothing (the daemon
	// passes the configured ones).
	Limits func(mailbox string) Limits
	// Rewrite says how the sender rule of a message rewrites it on the way
	// out; nil rewrites nothing. It is asked at every attempt, so a changed
	// rule applies to queued mail too.
	Rewrite func(env *envelope.Envelope) rewrite.Mode
}

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

// New checks opts and applies defaults.
func New(opts Options) (*Scheduler, error) {
	if opts.Spool == nil || opts.Forwarder == nil {
		return nil, errors.New("delivery: Spool and Forwarder are required")
	}
	if opts.Workers <= 0 {
		opts.Workers = 3
	}
	if opts.Backoff == (Backoff{}) {
		opts.Backoff = Backoff{Min: time.Minute, Max: 30 * time.Minute, Factor: 2, Jitter: 0.2}
	}
	if opts.Backoff.Factor < 1 {
		opts.Backoff.Factor = 2
	}
	if opts.MaxAge <= 0 {
		opts.MaxAge = 120 * time.Hour
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
		opts.RescanEvery = 30 * time.Second
	}
	if opts.RestoreAfter <= 0 {
		opts.RestoreAfter = time.Minute
	}
	if opts.AttemptTimeout <= 0 {
		opts.AttemptTimeout = 10 * time.Minute
	}
	if opts.ContinuousErrors <= 0 {
		opts.ContinuousErrors = 5
	}
	return &Scheduler{
		o: opts, sp: opts.Spool, log: opts.Logger,
		due: newDueQueue(), running: map[envelope.ID]*run{}, parked: map[envelope.ID]time.Time{},
		boxes: map[string]*mailbox{}, pacers: map[string]*pacer{}, panics: map[envelope.ID]int{},
		slots: map[string]*slots{}, early: map[envelope.ID]bool{},
		wake: make(chan struct{}),
	}, nil
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
