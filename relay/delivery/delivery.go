// Package delivery owns the retry policy: workers that drain the spool to
// Exchange Online, decide per recipient what a reply means (deliver, retry,
// fail), and hold a mailbox whose configuration or quota makes every attempt
// fail, so the queue is neither bounced nor hammered. It also paces each
// mailbox to Exchange's limits (Limits: messages per minute, recipients per
// rolling day) and applies a sender rule's rewrite (Options.Rewrite) as the
// message is read from the spool, so the spool keeps what the application
// sent.
//
// Per-mailbox policy, by reply (docs/exchange.md#replies, docs/delivery-failures.md):
//   - 432 4.3.2 (concurrent connections): the scheduler, sole owner of the
//     mailbox's connection limit (slots.go), lowers it to the connections
//     we hold and the message waits for one of them; if none is ours, the
//     message is retried in ½–2 × retry_min.
//   - 554 5.2.0 (recipient quota): the mailbox is paused until the oldest
//     recipients it counted leave the 24 h window, at most an hour at a time.
//   - 501 5.5.127 (session token expired): upstream reconnects with a fresh
//     token; if that fails too the message waits a quarter of retry_min,
//     the attempt is not counted and nothing fails.
//   - The same permanent error ContinuousErrors times in a row: the mailbox is
//     marked unhealthy (log, metric) and paused along the retry schedule,
//     one probe message at a time, instead of feeding Exchange's
//     continuous-error throttling (550 5.2.25x).
//
// Messages wait in a priority queue keyed by due time (queue.go), so a
// pick is O(log n) and, under a backlog, the oldest due message goes
// first. Nothing waits for a tick that could be an event: a message is
// made due when it is queued, when a connection of its mailbox frees, or
// at its pacing slot or retry time (one timer, for the earliest).
//
// A worker never waits on a mailbox whose connections (Limits.Connections)
// are all in use: the message is parked and made due again, at the time
// it was due, the moment one of that mailbox's attempts ends, so one busy
// mailbox cannot hold up the others' mail.
//
// A panic while delivering one message is contained to it: logged without
// its value or any data, the message retried, and set aside (failed/ or
// corrupt/) after three.
//
// Each attempt is noted in the message's record before it starts
// (attempts+1 and the next attempt time, as mox does), so a crash of the
// relay mid-delivery cannot cause a hot retry loop; the note is not
// fsynced (spool.NoteAttempt): a power failure before the attempt ends
// only means the attempt is made again. What an attempt decided (deferred
// recipients, replies) is recorded durably. Delivery is at-least-once: a
// crash between Exchange's 250 and Remove sends the message again.
package delivery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/reply"
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

// scheduleLocked makes id due at at and wakes the workers if that is
// earlier than anything they wait for. A message being attempted is left
// to its release. Callers hold mu.
func (s *Scheduler) scheduleLocked(id envelope.ID, at time.Time) {
	if s.running[id] != nil {
		return
	}
	delete(s.parked, id)
	_, top, ok := s.due.peek()
	s.due.set(id, at)
	if !ok || at.Before(top) {
		close(s.wake)
		s.wake = make(chan struct{})
	}
}

// Enqueued tells the scheduler about a message just Put: deliver it now.
func (s *Scheduler) Enqueued(id envelope.ID) {
	s.log.Info("queued", zap.String("id", string(id)))
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scheduleLocked(id, s.o.Clock())
}

// Run delivers due messages with Workers workers until ctx is cancelled; it
// returns after every worker stopped. An attempt in flight is cancelled; its
// attempt was recorded before it began, so it is retried per the backoff.
func (s *Scheduler) Run(ctx context.Context) error {
	s.start()
	var wg sync.WaitGroup
	for range s.o.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.worker(ctx)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case <-s.o.After(s.o.RescanEvery):
				if err := s.rescan(); err != nil {
					s.log.Error("rescan failed", zap.Error(err))
				}
			}
		}
	}()
	wg.Wait()
	return nil
}

// start queues what the spool holds, without reading it: each message is
// due at the time it was received, so the backlog goes oldest first; a
// message whose record says it is due later is put back at that time when
// a worker first looks at it (attemptMode).
func (s *Scheduler) start() {
	ids := s.sp.IDs()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		if _, known := s.due.when(id); !known {
			s.scheduleLocked(id, id.Time())
		}
	}
}

// Rescan picks up entries added or retried by the CLI now, instead of at
// the next periodic scan.
func (s *Scheduler) Rescan() error { return s.rescan() }

// rescan applies what the CLI changed: messages gone are forgotten, new or
// changed ones are due when their record says (a retried one: now).
func (s *Scheduler) rescan() error {
	changed, gone, err := s.sp.Rescan()
	if err != nil {
		return err
	}
	due := make([]time.Time, len(changed))
	for i, id := range changed {
		due[i] = id.Time()
		if e, err := s.sp.Get(id); err == nil && !e.State.NextAttempt.IsZero() {
			due[i] = e.State.NextAttempt
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range gone {
		s.due.remove(id)
		delete(s.parked, id)
	}
	for i, id := range changed {
		if _, parked := s.parked[id]; !parked {
			s.scheduleLocked(id, due[i])
		}
	}
	return nil
}

func (s *Scheduler) worker(ctx context.Context) {
	for {
		s.mu.Lock()
		now := s.o.Clock()
		id, at, ok := s.due.peek()
		if ok && !at.After(now) {
			s.due.remove(id)
			s.running[id] = &run{done: make(chan struct{}), at: at}
			s.mu.Unlock()
			s.attemptOwned(ctx, id)
			continue
		}
		wake := s.wake
		s.mu.Unlock()
		var timer <-chan time.Time
		if ok {
			timer = s.o.After(at.Sub(now))
		}
		select {
		case <-ctx.Done():
			return
		case <-wake:
		case <-timer:
		}
	}
}

// acquire takes the per-message exclusivity: never two attempts of one
// message at once.
func (s *Scheduler) acquire(ctx context.Context, id envelope.ID) error {
	for {
		s.mu.Lock()
		r := s.running[id]
		if r == nil {
			at, _ := s.due.when(id)
			s.due.remove(id)
			delete(s.parked, id)
			s.running[id] = &run{done: make(chan struct{}), at: at}
			s.mu.Unlock()
			return nil
		}
		s.mu.Unlock()
		select {
		case <-r.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// release ends an attempt: the message is due again at next (zero: it
// left the queue), or, parked, when a slot of its mailbox frees.
func (s *Scheduler) release(id envelope.ID, next time.Time, parked bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.running[id]
	close(r.done)
	delete(s.running, id)
	if s.early[id] {
		delete(s.early, id)
		if parked {
			parked, next = false, r.at
		} else if !next.IsZero() {
			next = s.o.Clock()
		}
	}
	switch {
	case parked:
		s.parked[id] = r.at
	case !next.IsZero():
		s.scheduleLocked(id, next)
	default:
		delete(s.panics, id)
		for _, p := range s.pacers {
			p.forget(id)
		}
	}
}

// errAttemptPanicked: an attempt panicked outside the forwarder (a bug in
// the scheduler's own bookkeeping); the message is retried later.
var errAttemptPanicked = errors.New("delivery attempt panicked")

// guarded runs one attempt, containing a panic to the message: a message
// whose attempts panic three times is moved to corrupt/ with the reason,
// never retried forever. (Panics inside the forwarder are counted durably in
// the message's state by attemptMode; this guard covers the rest.)
func (s *Scheduler) guarded(ctx context.Context, id envelope.ID, sync bool) (out *Outcome, err error) {
	defer func() {
		v := recover()
		if v == nil {
			return
		}
		// The type and stack name code, not data: no value, no body.
		s.log.Error("panic in delivery attempt", zap.String("id", string(id)),
			zap.String("panic", fmt.Sprintf("%T", v)), zap.ByteString("stack", debug.Stack()))
		s.mu.Lock()
		s.panics[id]++
		n := s.panics[id]
		s.mu.Unlock()
		out, err = nil, errAttemptPanicked
		if n >= 3 {
			why := fmt.Errorf("delivery panicked %d times (%T); set aside", n, v)
			if qerr := s.sp.Quarantine(id, why); qerr != nil && !errors.Is(qerr, spool.ErrNotFound) {
				s.log.Error("could not set aside a message whose delivery panics", zap.String("id", string(id)), zap.Error(qerr))
				return
			}
			count("", "failed", "panic")
			out, err = &Outcome{Failed: map[string]*reply.Error{}, Removed: true,
				Err: reply.Wrap(why, 451, enhInternal, "Internal error; message set aside")}, nil
		}
	}()
	return s.attemptMode(ctx, id, sync)
}

func (s *Scheduler) attemptOwned(ctx context.Context, id envelope.ID) {
	out, err := s.guarded(ctx, id, false)
	var next time.Time
	parked := false
	if err == nil && out != nil && !out.Removed {
		next, parked = out.NextAttempt, out.parked
	}
	if err != nil && !errors.Is(err, spool.ErrNotFound) {
		s.log.Error("attempt could not be recorded", zap.String("id", string(id)), zap.Error(err))
		next = s.o.Clock().Add(s.o.Backoff.Min)
	}
	s.release(id, next, parked)
}

// Outcome is what one attempt did to a message.
type Outcome struct {
	Delivered []string
	Failed    map[string]*reply.Error
	Pending   []string
	// Err is the attempt's message-level error (a *reply.Error), if any.
	Err error
	// Reply is Exchange's final reply text on success.
	Reply string
	// Removed says the message left the queue (delivered or failed for all).
	Removed bool
	// NextAttempt is when it is due again if it stays queued.
	NextAttempt time.Time
	// parked: every connection of the mailbox is busy; the message is due
	// again when one frees, not at NextAttempt.
	parked bool
	// slotRetry: a 432 4.3.2 while we hold other connections lowered the
	// limit; the message should go again on one of ours.
	slotRetry bool
}

// DeliverNow runs one attempt in the caller's goroutine (ack=upstream mode)
// and returns its outcome. A permanent failure removes the message: the
// client is told the 5xx, so it is no longer ours. A transient one leaves it
// queued and scheduled.
func (s *Scheduler) DeliverNow(ctx context.Context, id envelope.ID) (*Outcome, error) {
	if err := s.acquire(ctx, id); err != nil {
		return nil, err
	}
	out, err := s.guarded(ctx, id, true)
	// A 432 4.3.2 while we hold other connections: the limit is lower now
	// and the next try waits (enterWait) for one of ours, as the client
	// waits for this message; at most three times, then the 432 stands.
	for i := 0; i < 3 && err == nil && out.slotRetry && ctx.Err() == nil; i++ {
		out, err = s.guarded(ctx, id, true)
	}
	var next time.Time
	if err == nil && !out.Removed {
		next = out.NextAttempt
	}
	if err != nil && !errors.Is(err, spool.ErrNotFound) {
		next = s.o.Clock().Add(s.o.Backoff.Min)
	}
	s.release(id, next, false)
	return out, err
}

func (s *Scheduler) attempt(ctx context.Context, id envelope.ID) (*Outcome, error) {
	return s.attemptMode(ctx, id, false)
}

var (
	enhExpired  = reply.EnhancedCode{4, 4, 7} // RFC 3463 X.4.7 delivery time expired
	enhInternal = reply.EnhancedCode{4, 3, 0}
	enhHeld     = reply.EnhancedCode{4, 3, 0} // RFC 3463 X.3.0: the mail system (upstream) is unavailable
)

func (s *Scheduler) attemptMode(ctx context.Context, id envelope.ID, sync bool) (*Outcome, error) {
	// Re-read the state: the CLI may have retried or deleted the message.
	// One open of the record for the whole attempt: state, note, body.
	a, err := s.sp.Begin(id)
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := a.Close(); cerr != nil {
			s.log.Warn("closing queued message", zap.String("id", string(id)), zap.Error(cerr))
		}
	}()
	env, st := a.Entry.Envelope, a.Entry.State
	now := s.o.Clock()
	if !sync && st.NextAttempt.After(now) {
		// Looked at early (after a restart or a rescan): its record says
		// when it is due.
		return &Outcome{NextAttempt: st.NextAttempt}, nil
	}
	log := s.log.With(zap.String("id", string(id)), zap.String("mailbox", env.Mailbox), zap.Int64("size", env.Size))
	var pending []string
	for _, r := range env.To {
		if st.Status(r) == spool.Pending {
			pending = append(pending, r)
		}
	}
	out := &Outcome{Failed: map[string]*reply.Error{}}
	if len(pending) == 0 {
		return out, s.finish(log, env, &st, out, "", sync)
	}
	if now.Sub(env.Received) > s.o.MaxAge {
		re := reply.New(451, enhExpired, "Message expired: could not be delivered within the queue lifetime")
		for _, r := range pending {
			st.Set(r, spool.Failed, re.Error())
			out.Failed[r] = re
		}
		out.Err = re
		return out, s.finish(log, env, &st, out, "expired", sync)
	}
	if until, ok := s.holdUntil(env.Mailbox, now); ok {
		// Held (configuration, quota or throttling): no attempt, the
		// attempt counter is untouched. In ack=upstream mode the client
		// learns why the message is only queued.
		out.Pending, out.NextAttempt = pending, until
		out.Err = reply.New(451, enhHeld, "Delivery for this mailbox is paused; message queued")
		return out, nil
	}
	defer s.endProbe(env.Mailbox)
	admitted := now
	var lim Limits
	if s.o.Limits != nil {
		lim = s.o.Limits(env.Mailbox)
	}
	if !sync {
		// A worker does not wait on a mailbox whose connections are all
		// busy (that would leave other mailboxes' mail waiting behind
		// it): the message is parked and due again as soon as one of
		// that mailbox's attempts ends.
		if !s.enter(id, env.Mailbox, lim.Connections) {
			out.Pending, out.parked = pending, true
			out.Err = reply.New(451, enhHeld, "Mailbox connections busy; message queued")
			return out, nil
		}
	} else if err := s.enterWait(ctx, env.Mailbox, lim.Connections); err != nil {
		out.Pending, out.NextAttempt = pending, now
		out.Err = reply.Wrap(err, 451, enhHeld, "Mailbox connections busy; message queued")
		return out, nil
	}
	defer s.leave(env.Mailbox)
	if s.o.Limits != nil {
		if at, ok := s.admit(id, env.Mailbox, lim, len(pending), now); !ok {
			// Paced: not an attempt, nothing recorded; the scheduler
			// brings it back at its slot.
			log.Debug("paced", zap.Time("next_attempt", at))
			out.Pending, out.NextAttempt = pending, at
			out.Err = reply.New(451, enhHeld, "Mailbox sending rate reached; message queued")
			return out, nil
		}
	}

	// Note the attempt before making it (mox): a crash of the relay from
	// here on finds attempts+1 and a future NextAttempt.
	st.Attempts++
	if st.FirstAttempt.IsZero() {
		st.FirstAttempt = now
	}
	st.LastAttempt = now
	st.NextAttempt = now.Add(s.backoff(st.Attempts))
	if err := a.Note(st); err != nil {
		return nil, err
	}

	res, derr := s.forward(ctx, log, a, env, pending)
	// Closed before the record is removed or moved (its file may be
	// reused at once).
	if err := a.Close(); err != nil {
		log.Warn("closing queued message", zap.Error(err))
	}
	if ctx.Err() != nil && derr != nil {
		// Abandoned (shutdown): the recorded attempt and NextAttempt stand.
		out.Pending, out.NextAttempt, out.Err = pending, st.NextAttempt, derr
		return out, nil
	}
	if errors.Is(derr, spool.ErrCorrupt) {
		// The record on disk is damaged: the forwarder aborted before the
		// final dot (spool.Body fails at EOF). Retrying cannot help and
		// failing would bounce a message we cannot read; keep it for an
		// operator.
		count(env.Mailbox, "failed", "corrupt")
		log.Error("queued message is corrupt; moved to corrupt/", zap.Int("attempt", st.Attempts), zap.Error(derr))
		out.Err, out.Removed = derr, true
		if err := s.sp.Quarantine(id, derr); err != nil && !errors.Is(err, spool.ErrNotFound) {
			return nil, err
		}
		return out, nil
	}
	var panicked bool
	if pe, ok := derr.(*panicError); ok {
		panicked = true
		st.Panics++
		derr = reply.Wrap(pe, 451, enhInternal, "Internal error")
	}
	now = s.o.Clock()
	accepted := map[string]bool{}
	if res != nil {
		for _, r := range res.Accepted {
			accepted[r] = true
		}
		out.Reply = res.Reply
	}
	class := "250"
	re := reply.As(derr)
	if derr != nil && re == nil {
		re = reply.Wrap(derr, 451, enhInternal, "Local error in delivery")
	}
	if re != nil {
		class = classOf(re)
		st.LastError = re.Error()
	}
	var hold holdDecision
	if s.lowerAfter432(id, env.Mailbox, re, now) {
		// Someone else holds one of the mailbox's connections: the limit
		// is lower now and the message goes again on one of ours, as soon
		// as one frees — not its fault, not an attempt.
		hold, out.slotRetry, out.parked = holdDecision{keep: true, next: now}, true, !sync
	} else {
		hold = s.classify(log, env.Mailbox, re, now)
	}
	for _, r := range pending {
		switch {
		case res != nil && res.Rejected[r] != nil:
			rr := res.Rejected[r]
			if rr.Temporary() {
				out.Pending = append(out.Pending, r)
				st.Set(r, spool.Pending, rr.Error())
			} else {
				st.Set(r, spool.Failed, rr.Error())
				out.Failed[r] = rr
			}
		case re == nil && accepted[r]:
			st.Set(r, spool.Delivered, res.Reply)
			out.Delivered = append(out.Delivered, r)
		case re == nil:
			// Neither accepted nor rejected: not attempted; retry it.
			out.Pending = append(out.Pending, r)
		case panicked && st.Panics >= 3:
			st.Set(r, spool.Failed, "internal error")
			out.Failed[r] = reply.New(451, enhInternal, "internal error")
		case hold.keep || re.Temporary() || panicked:
			out.Pending = append(out.Pending, r)
		default:
			st.Set(r, spool.Failed, re.Error())
			out.Failed[r] = re
		}
	}
	out.Err = derr
	if s.o.Limits != nil {
		s.settle(env.Mailbox, admitted, len(pending), len(out.Delivered))
	}
	if len(out.Delivered) > 0 {
		count(env.Mailbox, "delivered", "250")
		log.Info("delivered", zap.Strings("rcpts", out.Delivered), zap.Int("attempt", st.Attempts), zap.String("reply", out.Reply))
	}
	if len(out.Pending) > 0 {
		if hold.keep {
			// Not the message's fault: the attempt does not count.
			st.Attempts--
		}
		if !hold.next.IsZero() {
			st.NextAttempt = hold.next
		}
		out.NextAttempt = st.NextAttempt
	}
	reason := ""
	if panicked && st.Panics >= 3 {
		reason = "internal error"
	}
	if len(out.Pending) > 0 {
		if err := s.sp.SetState(id, st); err != nil {
			return nil, err
		}
		count(env.Mailbox, "deferred", class)
		log.Warn("deferred", zap.Strings("rcpts", out.Pending), zap.Int("attempt", st.Attempts), zap.String("upstream", class), zap.Time("next_attempt", st.NextAttempt), zap.NamedError("reason", derr))
		if len(out.Failed) > 0 {
			log.Warn("failed for some recipients", zap.Int("failed", len(out.Failed)))
		}
		return out, nil
	}
	return out, s.finish(log, env, &st, out, reason, sync)
}

// finish removes a message that has no pending recipient: into failed/ if
// any failed, deleted if all were delivered.
//
// In ack=upstream mode (reported) the client is told the permanent reply,
// so the message is removed rather than kept in failed/.
func (s *Scheduler) finish(log *zap.Logger, env *envelope.Envelope, st *spool.State, out *Outcome, reason string, reported bool) error {
	out.Removed = true
	anyFailed := false
	for _, r := range env.To {
		if st.Status(r) == spool.Failed {
			anyFailed = true
		}
	}
	if !anyFailed {
		err := s.sp.Remove(env.ID)
		if errors.Is(err, spool.ErrNotFound) {
			return nil
		}
		return err
	}
	if reason == "" {
		reason = st.LastError
	}
	st.Final = reason
	class := "local"
	if re := reply.As(out.Err); re != nil {
		class = classOf(re)
	}
	count(env.Mailbox, "failed", class)
	log.Error("failed", zap.Int("attempt", st.Attempts), zap.String("upstream", class), zap.String("final", reason))
	var err error
	if reported {
		log.Info("permanent failure reported to the client; removed from the spool")
		err = s.sp.Remove(env.ID)
	} else {
		err = s.sp.Fail(env.ID, *st)
	}
	if errors.Is(err, spool.ErrNotFound) {
		return nil // deleted by the CLI meanwhile
	}
	return err
}

type panicError struct{ v any }

func (p *panicError) Error() string { return fmt.Sprintf("panic during delivery: %v", p.v) }

// forward calls the Forwarder with the pending recipients, containing a
// panic to this message.
func (s *Scheduler) forward(ctx context.Context, log *zap.Logger, a *spool.Attempt, env *envelope.Envelope, pending []string) (res *envelope.Result, err error) {
	start := time.Now()
	defer func() { attemptDuration.Observe(time.Since(start).Seconds()) }()
	body, err := a.Body()
	if err != nil {
		return nil, reply.Wrap(err, 451, enhInternal, "Local error reading queued message")
	}
	defer func() {
		if v := recover(); v != nil {
			// The stack names code, not data; the body is not logged.
			log.Error("panic during delivery", zap.Any("panic", fmt.Sprintf("%T", v)), zap.ByteString("stack", debug.Stack()))
			res, err = nil, &panicError{v: fmt.Sprintf("%T", v)}
		}
	}()
	e2 := *env
	e2.To = pending
	var r io.Reader = body
	if s.o.Rewrite != nil {
		switch s.o.Rewrite(env) {
		case rewrite.EnvelopeFrom:
			// The spool keeps the original; the header is rewritten as it
			// streams out (rewrite.From holds only the header section).
			r = rewrite.From(body, env.Mailbox)
			e2.Size += rewrite.Slack
			e2.From = env.Mailbox
		case rewrite.Envelope:
			e2.From = env.Mailbox
		}
	}
	ctx, cancel := context.WithTimeout(ctx, s.o.AttemptTimeout)
	defer cancel()
	return s.o.Forwarder.Deliver(ctx, &e2, r)
}

// pacerLocked returns mailbox's pacer. Callers hold mu.
func (s *Scheduler) pacerLocked(mailbox string) *pacer {
	k := strings.ToLower(mailbox)
	p := s.pacers[k]
	if p == nil {
		p = newPacer()
		s.pacers[k] = p
	}
	return p
}

func (s *Scheduler) admit(id envelope.ID, mailbox string, l Limits, rcpts int, now time.Time) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.pacerLocked(mailbox).admit(id, rcpts, l, now)
	if !ok {
		limit := "rate"
		if l.DailyRecipients > 0 && s.pacerLocked(mailbox).sum+rcpts > l.DailyRecipients {
			limit = "daily_recipients"
		}
		pacedTotal.WithLabelValues(mailbox, limit).Inc()
	}
	return at, ok
}

func (s *Scheduler) settle(mailbox string, at time.Time, reserved, delivered int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pacerLocked(mailbox).settle(at, reserved, delivered)
}

func classOf(re *reply.Error) string {
	if re.Enhanced != reply.NoEnhancedCode && re.Enhanced != reply.EnhancedCodeNotSet {
		return reply.EnhancedString(re.Code, re.Enhanced)
	}
	return strconv.Itoa(re.Code)
}
