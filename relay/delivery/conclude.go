package delivery

import (
	"context"
	"errors"

	"go.uber.org/zap"

	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/reply"
	"github.com/o365relay/o365relay/relay/spool"
)

// verdict is what an attempt's reply means for its message and mailbox.
type verdict struct {
	err      error        // the forwarder's error, a panic wrapped as a 451
	re       *reply.Error // err as a reply; nil when the message was taken
	class    string       // the reply class for logs and metrics ("250" on success)
	panicked bool
	hold     holdDecision
	accepted map[string]bool
}

// conclude acts on what the forwarder returned. An attempt abandoned at
// shutdown keeps the recorded attempt and NextAttempt; a damaged record is
// set aside; otherwise the reply is judged, each pending recipient's fate
// decided and the result persisted.
func (s *Scheduler) conclude(ctx context.Context, r *attemptRun, res *envelope.Result, derr error) (*Outcome, error) {
	if ctx.Err() != nil && derr != nil {
		r.out.Pending, r.out.NextAttempt, r.out.Err = r.pending, r.st.NextAttempt, derr
		return r.out, nil
	}
	if errors.Is(derr, spool.ErrCorrupt) {
		return s.setAside(r, derr)
	}
	v := s.judge(r, res, derr)
	s.decide(r, res, v)
	return s.persist(r, v)
}

// judge classifies the attempt's reply and updates the mailbox's state
// (connection limit, health) accordingly.
func (s *Scheduler) judge(r *attemptRun, res *envelope.Result, derr error) verdict {
	v := verdict{err: derr, class: "250", accepted: map[string]bool{}}
	if pe, ok := derr.(*panicError); ok {
		v.panicked = true
		r.st.Panics++
		v.err = reply.Wrap(pe, 451, enhInternal, "Internal error")
	}
	now := s.o.Clock()
	if res != nil {
		for _, rcpt := range res.Accepted {
			v.accepted[rcpt] = true
		}
		r.out.Reply = res.Reply
	}
	v.re = reply.As(v.err)
	if v.err != nil && v.re == nil {
		v.re = reply.Wrap(v.err, 451, enhInternal, "Local error in delivery")
	}
	if v.re != nil {
		v.class = classOf(v.re)
		r.st.LastError = v.re.Error()
	}
	if s.lowerAfter432(r.id, r.env.Mailbox, v.re, now) {
		// Someone else holds one of the mailbox's connections: the limit
		// is lower now and the message goes again on one of ours, as soon
		// as one frees — not its fault, not an attempt.
		v.hold, r.out.slotRetry, r.out.parked = holdDecision{keep: true, next: now}, true, !r.sync
	} else {
		v.hold = s.classify(r.log, r.env.Mailbox, v.re, now)
	}
	return v
}

// decide sets each pending recipient's status from Exchange's reply to it
// and to the message.
func (s *Scheduler) decide(r *attemptRun, res *envelope.Result, v verdict) {
	out, st := r.out, &r.st
	for _, rcpt := range r.pending {
		switch {
		case res != nil && res.Rejected[rcpt] != nil:
			// A refusal of this recipient fails it only if it is final
			// and about the message: one about the sending mailbox or
			// its session (its token, quota, throttling) would come
			// back for every recipient; the recipient waits.
			rr := res.Rejected[rcpt]
			if rr.Temporary() || replyAbout(rr) != aboutMessage {
				out.Pending = append(out.Pending, rcpt)
				st.Set(rcpt, spool.Pending, rr.Error())
			} else {
				st.Set(rcpt, spool.Failed, rr.Error())
				out.Failed[rcpt] = rr
			}
		case v.re == nil && v.accepted[rcpt]:
			st.Set(rcpt, spool.Delivered, res.Reply)
			out.Delivered = append(out.Delivered, rcpt)
		case v.re == nil:
			// Neither accepted nor rejected: not attempted; retry it.
			out.Pending = append(out.Pending, rcpt)
		case v.panicked && st.Panics >= 3:
			st.Set(rcpt, spool.Failed, "internal error")
			out.Failed[rcpt] = reply.New(451, enhInternal, "internal error")
		case v.hold.keep || v.re.Temporary() || v.panicked:
			out.Pending = append(out.Pending, rcpt)
		default:
			st.Set(rcpt, spool.Failed, v.re.Error())
			out.Failed[rcpt] = v.re
		}
	}
	out.Err = v.err
}

// persist records what the attempt decided: a message with pending
// recipients gets its new state (a hold does not count the attempt and
// sets the next one), one without is finished.
func (s *Scheduler) persist(r *attemptRun, v verdict) (*Outcome, error) {
	out := r.out
	if s.o.Limits != nil {
		s.settle(r.env.Mailbox, r.now, len(r.pending), len(out.Delivered))
	}
	if len(out.Delivered) > 0 {
		count(r.env.Mailbox, "delivered", "250")
		r.log.Info("delivered", zap.Strings("rcpts", out.Delivered), zap.Int("attempt", r.st.Attempts), zap.String("reply", out.Reply))
	}
	if len(out.Pending) == 0 {
		reason := ""
		if v.panicked && r.st.Panics >= 3 {
			reason = "internal error"
		}
		return out, s.finish(r.log, r.env, &r.st, out, reason, r.sync)
	}
	if v.hold.keep {
		// Not the message's fault: the attempt does not count.
		r.st.Attempts--
	}
	if !v.hold.next.IsZero() {
		r.st.NextAttempt = v.hold.next
	}
	out.NextAttempt = r.st.NextAttempt
	if err := s.sp.SetState(r.id, r.st); err != nil {
		return nil, err
	}
	count(r.env.Mailbox, "deferred", v.class)
	r.log.Warn("deferred", zap.Strings("rcpts", out.Pending), zap.Int("attempt", r.st.Attempts), zap.String("upstream", v.class),
		zap.Time("next_attempt", r.st.NextAttempt), zap.NamedError("reason", v.err))
	if len(out.Failed) > 0 {
		r.log.Warn("failed for some recipients", zap.Int("failed", len(out.Failed)))
	}
	return out, nil
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
