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

// pathFailure reports a failure of the relay's path to Exchange rather
// than of a message: anything before MAIL FROM — the token, the TCP
// connection and greeting (a 5xx greeting included), EHLO, STARTTLS (not
// offered, refused), the TLS handshake and certificate, AUTH (XOAUTH2 not
// offered, or any reply to it). Like Postfix (smtp_skip_5xx_greeting,
// smtp_sasl_auth_soft_bounce, a required-TLS failure defers), the relay
// holds the mailbox and keeps its mail queued; only Exchange's replies to
// MAIL, RCPT and the end of DATA can fail a message or a recipient.
// docs/delivery-failures.md has the table.
func pathFailure(re *reply.Error) bool {
	switch re.Stage {
	case reply.StageToken, reply.StageConnect, reply.StageTLS, reply.StageAuth:
		return true
	}
	return false
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
	enh := re.Enhanced
	switch {
	case re.Code == 432 || (re.Temporary() && re.Code != 421 && enh == [3]int{4, 3, 2}):
		// Too many concurrent connections ("432 4.3.2 Concurrent
		// connections limit exceeded", "4.3.2 STOREDRV.ClientSubmit;
		// sender thread limit exceeded"): retry soon, 30 s – 2 min.
		// "421 4.3.2 Service not available" is the server going away,
		// an outage like any other: the path hold below applies.
		// The upstream pool already waited for one of our own
		// connections if it had any; this one is someone else's.
		base := s.o.Backoff.Min / 2
		d := base + time.Duration(s.o.Rand()*float64(3*base))
		return holdDecision{next: now.Add(d)}
	case pathFailure(re), re.Code == 530 && enh == [3]int{5, 7, 57}:
		cause := string(re.Stage)
		if !pathFailure(re) {
			cause = string(reply.StageAuth) // 530 5.7.57 at MAIL: not authenticated
		}
		return s.holdOnScheduleLocked(log, b, name, re, cause, now)
	case sendingMailboxFull(re):
		return s.holdOnScheduleLocked(log, b, name, re, causeMailboxFull, now)
	case re.Code == 554 && enh == [3]int{5, 2, 0}:
		// SubmissionQuotaExceeded: 10,000 recipients per rolling 24 h.
		// Room comes back when the oldest recipients we sent leave the
		// window; we may not know them all (a restart, another sender on
		// the mailbox), so probe at least hourly, at most every minute.
		d := time.Hour
		if at, ok := s.pacerLocked(name).quotaFreesAt(now); ok {
			d = min(max(at.Sub(now), time.Minute), time.Hour)
		}
		return s.holdLocked(log, b, name, re, "quota", now.Add(d))
	case re.Code == 501 && enh == [3]int{5, 5, 127}:
		// The session's token expired and upstream's reconnect with a
		// fresh one failed the same way: not the message's fault. Retry
		// soon, without counting the attempt.
		return holdDecision{keep: true, next: now.Add(s.o.Backoff.Min / 4)}
	case re.Code == 550 && enh[0] == 5 && enh[1] == 2 && enh[2] >= 251 && enh[2] <= 255:
		// Continuous-error throttling: stop and alert; retrying makes it worse.
		return s.holdLocked(log, b, name, re, "throttled", now.Add(time.Hour))
	case !re.Temporary():
		s.countPermanentLocked(log, b, name, re, now)
	}
	return holdDecision{}
}

// causeMailboxFull is the hold's cause (and metric reason) for a full
// sending mailbox.
const causeMailboxFull = "mailbox_full"

// sendingMailboxFull reports Exchange's "554 5.2.2 mailbox full;
// STOREDRV.Submission.Exception:QuotaExceededException" to MAIL or the
// data: the sending mailbox is over its storage quota (the messages it
// sends are kept in its Sent Items). Every message of the mailbox would
// get the same reply until someone makes room, and none is at fault
// (docs/exchange.md#554-522-sending-mailbox-full). At RCPT, X.2.2 is a
// recipient's mailbox, that recipient's own failure.
func sendingMailboxFull(re *reply.Error) bool {
	return !re.Temporary() && re.Enhanced == [3]int{5, 2, 2} &&
		(re.Stage == reply.StageMail || re.Stage == reply.StageData)
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
