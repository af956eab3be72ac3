package delivery

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/reply"
	"github.com/o365relay/o365relay/relay/spool"
)

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

var (
	enhExpired  = reply.EnhancedCode{4, 4, 7} // RFC 3463 X.4.7 delivery time expired
	enhInternal = reply.EnhancedCode{4, 3, 0}
	enhHeld     = reply.EnhancedCode{4, 3, 0} // RFC 3463 X.3.0: the mail system (upstream) is unavailable
)

// attemptRun is one attempt of one message on its way through the steps
// below: the record it read and what the steps decided so far.
type attemptRun struct {
	id      envelope.ID
	a       *spool.Attempt // the record, open for the whole attempt
	env     *envelope.Envelope
	st      spool.State // the record's state, updated by the steps
	now     time.Time   // when the attempt began
	sync    bool        // DeliverNow: the client waits for the outcome
	log     *zap.Logger
	pending []string // recipients not yet delivered or failed
	out     *Outcome
}

func (s *Scheduler) attempt(ctx context.Context, id envelope.ID) (*Outcome, error) {
	return s.attemptMode(ctx, id, false)
}

// attemptMode makes one attempt of id, in steps: check whether it is to
// be attempted (due, not expired, mailbox not held, a connection free,
// within pacing), note the attempt in the record, forward the message,
// then conclude: classify the reply and persist what it decided
// (docs/delivery-failures.md#how-an-attempt-runs).
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
	r := &attemptRun{id: id, a: a, env: a.Entry.Envelope, st: a.Entry.State, now: s.o.Clock(), sync: sync}
	if out, done, err := s.check(r); done {
		return out, err
	}
	if out, held := s.checkHold(r); held {
		return out, nil
	}
	defer s.endProbe(r.env.Mailbox)
	lim := s.limits(r.env.Mailbox)
	if out, busy := s.takeSlot(ctx, r, lim); busy {
		return out, nil
	}
	defer s.leave(r.env.Mailbox)
	if out, paced := s.pace(r, lim); paced {
		return out, nil
	}
	if err := s.note(r); err != nil {
		return nil, err
	}
	res, derr := s.forward(ctx, r.log, a, r.env, r.pending)
	// Closed before the record is removed or moved (its file may be
	// reused at once).
	if err := a.Close(); err != nil {
		r.log.Warn("closing queued message", zap.Error(err))
	}
	return s.conclude(ctx, r, res, derr)
}

// check decides whether the message is to be attempted at all. One looked
// at early (after a restart or a rescan) is put back at the time its
// record says; one without pending recipients is finished; one older
// than the queue lifetime fails with 4.4.7. done reports that the attempt
// ends here.
func (s *Scheduler) check(r *attemptRun) (out *Outcome, done bool, err error) {
	if !r.sync && r.st.NextAttempt.After(r.now) {
		return &Outcome{NextAttempt: r.st.NextAttempt}, true, nil
	}
	r.log = s.log.With(zap.String("id", string(r.id)), zap.String("mailbox", r.env.Mailbox), zap.Int64("size", r.env.Size))
	for _, rcpt := range r.env.To {
		if r.st.Status(rcpt) == spool.Pending {
			r.pending = append(r.pending, rcpt)
		}
	}
	r.out = &Outcome{Failed: map[string]*reply.Error{}}
	if len(r.pending) == 0 {
		return r.out, true, s.finish(r.log, r.env, &r.st, r.out, "", r.sync)
	}
	if r.now.Sub(r.env.Received) > s.o.MaxAge {
		re := reply.New(451, enhExpired, "Message expired: could not be delivered within the queue lifetime")
		for _, rcpt := range r.pending {
			r.st.Set(rcpt, spool.Failed, re.Error())
			r.out.Failed[rcpt] = re
		}
		r.out.Err = re
		return r.out, true, s.finish(r.log, r.env, &r.st, r.out, "expired", r.sync)
	}
	return nil, false, nil
}

// checkHold keeps the message queued while its mailbox is held
// (the path, configuration, quota or throttling): no attempt, the attempt
// counter untouched. In ack=upstream mode the client learns why the
// message is only queued.
func (s *Scheduler) checkHold(r *attemptRun) (*Outcome, bool) {
	until, held := s.holdUntil(r.env.Mailbox, r.now)
	if !held {
		return nil, false
	}
	r.out.Pending, r.out.NextAttempt = r.pending, until
	r.out.Err = reply.New(451, enhHeld, "Delivery for this mailbox is paused; message queued")
	return r.out, true
}

// limits returns mailbox's pacing and connection limits (none without
// Options.Limits).
func (s *Scheduler) limits(mailbox string) Limits {
	if s.o.Limits == nil {
		return Limits{}
	}
	return s.o.Limits(mailbox)
}

// takeSlot takes one of the mailbox's connections. A worker does not wait
// on a mailbox whose connections are all busy (that would leave other
// mailboxes' mail waiting behind it): the message is parked and due again
// as soon as one of that mailbox's attempts ends. DeliverNow waits, as its
// client does. busy reports that the attempt ends here.
func (s *Scheduler) takeSlot(ctx context.Context, r *attemptRun, lim Limits) (out *Outcome, busy bool) {
	if !r.sync {
		if s.enter(r.id, r.env.Mailbox, lim.Connections) {
			return nil, false
		}
		r.out.Pending, r.out.parked = r.pending, true
		r.out.Err = reply.New(451, enhHeld, "Mailbox connections busy; message queued")
		return r.out, true
	}
	if err := s.enterWait(ctx, r.env.Mailbox, lim.Connections); err != nil {
		r.out.Pending, r.out.NextAttempt = r.pending, r.now
		r.out.Err = reply.Wrap(err, 451, enhHeld, "Mailbox connections busy; message queued")
		return r.out, true
	}
	return nil, false
}

// pace keeps the mailbox within its rate and daily recipients. Paced is
// not an attempt and nothing is recorded; the scheduler brings the
// message back at its slot.
func (s *Scheduler) pace(r *attemptRun, lim Limits) (out *Outcome, paced bool) {
	if s.o.Limits == nil {
		return nil, false
	}
	at, ok := s.admit(r.id, r.env.Mailbox, lim, len(r.pending), r.now)
	if ok {
		return nil, false
	}
	r.log.Debug("paced", zap.Time("next_attempt", at))
	r.out.Pending, r.out.NextAttempt = r.pending, at
	r.out.Err = reply.New(451, enhHeld, "Mailbox sending rate reached; message queued")
	return r.out, true
}

// note records the attempt before it is made (as mox does): a crash of
// the relay from here on finds attempts+1 and a future NextAttempt, not a
// message to retry at once. The note is not fsynced (spool.Attempt.Note).
func (s *Scheduler) note(r *attemptRun) error {
	r.st.Attempts++
	if r.st.FirstAttempt.IsZero() {
		r.st.FirstAttempt = r.now
	}
	r.st.LastAttempt = r.now
	r.st.NextAttempt = r.now.Add(s.backoff(r.st.Attempts))
	return r.a.Note(r.st)
}

// setAside moves a message whose record is damaged to corrupt/: the
// forwarder aborted before the final dot (spool's body reader fails at
// EOF). Retrying cannot help and failing would bounce a message we cannot
// read; it is kept for an operator.
func (s *Scheduler) setAside(r *attemptRun, derr error) (*Outcome, error) {
	count(r.env.Mailbox, "failed", "corrupt")
	r.log.Error("queued message is corrupt; moved to corrupt/", zap.Int("attempt", r.st.Attempts), zap.Error(derr))
	r.out.Err, r.out.Removed = derr, true
	if err := s.sp.Quarantine(r.id, derr); err != nil && !errors.Is(err, spool.ErrNotFound) {
		return nil, err
	}
	return r.out, nil
}
