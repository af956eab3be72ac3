package delivery

import (
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/o365relay/o365relay/relay/reply"
	"github.com/o365relay/o365relay/relay/upstream"
)

// MailboxHealth is what the admin endpoint shows for one mailbox.
type MailboxHealth struct {
	Healthy bool
	// Reason is the reply class that held the mailbox ("" when healthy).
	Reason string
	// Cause is the kind of hold ("" when healthy): token, connect, tls
	// or auth for the path to Exchange (see pathFailure), mailbox_full
	// (the sending mailbox is over its quota), quota, throttled, or
	// continuous_errors. It is the reason label of
	// o365relay_delivery_mailbox_held.
	Cause string
	// HeldUntil is when the next probe attempt may run.
	HeldUntil time.Time
	// ConsecutivePermanent counts permanent failures in a row.
	ConsecutivePermanent int
}

type mailbox struct {
	MailboxHealth
	backoff   time.Duration
	probing   bool
	permClass string // class of the last permanent failure
	// shownCause is the reason label o365relay_delivery_mailbox_held
	// has a series for.
	shownCause string
}

// setMetric shows the mailbox's state in o365relay_delivery_mailbox_healthy
// and, while held, o365relay_delivery_mailbox_held{reason}.
func (b *mailbox) setMetric(name string) {
	if b.Healthy {
		mailboxHealthy.WithLabelValues(name).Set(1)
	} else {
		mailboxHealthy.WithLabelValues(name).Set(0)
	}
	if b.shownCause != "" && b.shownCause != b.Cause {
		mailboxHeld.DeleteLabelValues(name, b.shownCause)
	}
	if b.Cause != "" {
		mailboxHeld.WithLabelValues(name, b.Cause).Set(1)
	}
	b.shownCause = b.Cause
}

type holdDecision struct {
	keep bool      // keep recipients pending and do not count the attempt
	next time.Time // override NextAttempt
}

// Health returns a snapshot per mailbox seen so far.
func (s *Scheduler) Health() map[string]MailboxHealth {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]MailboxHealth{}
	for k, b := range s.boxes {
		out[k] = b.MailboxHealth
	}
	return out
}

func (s *Scheduler) box(name string) *mailbox {
	b := s.boxes[name]
	if b == nil {
		b = &mailbox{MailboxHealth: MailboxHealth{Healthy: true}}
		s.boxes[name] = b
		b.setMetric(name)
	}
	return b
}

// holdUntil reports whether the mailbox is held at now; when the hold has
// expired, one caller becomes the probe and the others keep waiting.
func (s *Scheduler) holdUntil(name string, now time.Time) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.box(name)
	if b.HeldUntil.IsZero() {
		return time.Time{}, false
	}
	if now.Before(b.HeldUntil) {
		return b.HeldUntil, true
	}
	if b.probing {
		return now.Add(s.o.Backoff.Min), true
	}
	b.probing = true
	return time.Time{}, false
}

func (s *Scheduler) endProbe(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.box(name).probing = false
}

// classify applies docs/exchange.md#replies to an attempt's reply and
// updates the mailbox's health. A hold keeps the message's recipients
// pending and does not count the attempt.
func (s *Scheduler) classify(log *zap.Logger, name string, re *reply.Error, now time.Time) holdDecision {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.box(name)
	if re == nil {
		if !b.Healthy {
			log.Info("mailbox recovered: delivery resumed", zap.String("was", b.Reason), zap.String("cause", b.Cause))
		}
		shown := b.shownCause
		*b = mailbox{MailboxHealth: MailboxHealth{Healthy: true}, shownCause: shown}
		b.setMetric(name)
		return holdDecision{}
	}
	switch replyAbout(re) {
	case aboutConnections:
		// Too many concurrent connections: retry soon, 30 s – 2 min. The
		// scheduler already lowered the limit and parked the message if
		// another connection was ours (lowerAfter432); this one is
		// someone else's.
		base := s.o.Backoff.Min / 2
		d := base + time.Duration(s.o.Rand()*float64(3*base))
		return holdDecision{next: now.Add(d)}
	case aboutPath:
		cause := string(re.Stage)
		if !pathFailure(re) {
			cause = string(reply.StageAuth) // 530 5.7.57: not authenticated
		}
		return s.holdOnScheduleLocked(log, b, name, re, cause, now)
	case aboutMailboxFull:
		return s.holdOnScheduleLocked(log, b, name, re, causeMailboxFull, now)
	case aboutQuota:
		// 10,000 recipients per rolling 24 h. Room comes back when the
		// oldest recipients we sent leave the window; we may not know
		// them all (a restart, another sender on the mailbox), so probe
		// at least hourly, at most every minute.
		d := time.Hour
		if at, ok := s.pacerLocked(name).quotaFreesAt(now); ok {
			d = min(max(at.Sub(now), time.Minute), time.Hour)
		}
		return s.holdLocked(log, b, name, re, "quota", now.Add(d))
	case aboutSessionToken:
		// Upstream's reconnect with a fresh token failed the same way,
		// or could not be tried: retry soon, without counting the
		// attempt.
		return holdDecision{keep: true, next: now.Add(s.o.Backoff.Min / 4)}
	case aboutThrottling:
		// Stop and alert; retrying makes it worse.
		return s.holdLocked(log, b, name, re, "throttled", now.Add(time.Hour))
	}
	if !re.Temporary() {
		s.countPermanentLocked(log, b, name, re, now)
	}
	return holdDecision{}
}

// holdOnScheduleLocked holds the mailbox for a condition that is not any
// message's fault and has no known end: a failure of the path to Exchange
// (configuration, an Entra or Exchange outage, a middlebox) or a full
// sending mailbox. Every message of this mailbox would fail the same way.
// The hold grows along the retry schedule (1 min → 30 min by default),
// one message probes at a time, every message stays queued. Callers hold
// mu.
func (s *Scheduler) holdOnScheduleLocked(log *zap.Logger, b *mailbox, name string, re *reply.Error, cause string, now time.Time) holdDecision {
	if !b.Healthy && b.HeldUntil.After(now) {
		// An attempt that started before the hold (several run at once):
		// the hold stands, and is not lengthened once per attempt that
		// was already under way.
		return holdDecision{keep: true, next: b.HeldUntil}
	}
	s.growBackoff(b)
	return s.holdLocked(log, b, name, re, cause, now.Add(b.backoff))
}

// holdLocked holds the mailbox until until because of re (cause is the
// held metric's reason label), logging the hold when it is new or its
// reason changed. Callers hold mu.
func (s *Scheduler) holdLocked(log *zap.Logger, b *mailbox, name string, re *reply.Error, cause string, until time.Time) holdDecision {
	reason := classOf(re)
	b.HeldUntil = until
	if b.Healthy || b.Reason != reason || b.Cause != cause {
		fields := []zap.Field{zap.String("reason", reason), zap.String("cause", cause), zap.Time("until", b.HeldUntil),
			zap.String("upstream", re.Error())}
		if h := holdHint(re, cause); h != "" {
			fields = append(fields, zap.String("hint", h))
		}
		log.Error("mailbox held: delivery paused", fields...)
	}
	b.Healthy, b.Reason, b.Cause = false, reason, cause
	b.setMetric(name)
	return holdDecision{keep: true, next: b.HeldUntil}
}

// holdHint is the fix a hold's log line suggests: the doctor's words for
// an AUTH refusal, what to do about a full sending mailbox.
func holdHint(re *reply.Error, cause string) string {
	if cause == causeMailboxFull {
		return "the sending mailbox is over its storage quota (every message sent is kept in its Sent Items): empty Sent Items or raise the mailbox's quota; the relay probes along the retry schedule, 'o365relay queue retry all' probes now"
	}
	return upstream.AuthHint(re) // the doctor's words
}

// growBackoff moves the mailbox's hold along the retry schedule: Min
// first, then doubled up to Max.
func (s *Scheduler) growBackoff(b *mailbox) {
	if b.backoff == 0 {
		b.backoff = s.o.Backoff.Min
	} else if b.backoff *= 2; b.backoff > s.o.Backoff.Max {
		b.backoff = s.o.Backoff.Max
	}
}

// countPermanentLocked notes a permanent failure: the message fails (its
// error is its own). The same error over and over means the mailbox, not
// the messages, is the problem; Exchange answers that with
// continuous-error throttling (550 5.2.25x,
// docs/exchange.md#550-5225x-throttled-sender). After ContinuousErrors in
// a row the mailbox is paused along the retry schedule and one probe goes
// through at a time. Callers hold mu.
func (s *Scheduler) countPermanentLocked(log *zap.Logger, b *mailbox, name string, re *reply.Error, now time.Time) {
	class := classOf(re)
	if class == b.permClass {
		b.ConsecutivePermanent++
	} else {
		b.permClass, b.ConsecutivePermanent = class, 1
	}
	if b.ConsecutivePermanent < s.o.ContinuousErrors {
		return
	}
	s.growBackoff(b)
	if b.Healthy {
		log.Error("mailbox unhealthy: the same permanent error repeats; pausing it", zap.Int("count", b.ConsecutivePermanent), zap.String("upstream", class))
	}
	b.Healthy, b.Reason, b.Cause = false, "continuous permanent errors "+class, "continuous_errors"
	b.HeldUntil = now.Add(b.backoff)
	b.setMetric(name)
}

// classOf is a reply's class for logs and metric labels: its enhanced
// code when it has one (5.7.3), else its basic code (535).
func classOf(re *reply.Error) string {
	if re.Enhanced != reply.NoEnhancedCode && re.Enhanced != reply.EnhancedCodeNotSet {
		return reply.EnhancedString(re.Code, re.Enhanced)
	}
	return strconv.Itoa(re.Code)
}
