package delivery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"time"

	"go.uber.org/zap"

	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/reply"
	"github.com/o365relay/o365relay/relay/rewrite"
	"github.com/o365relay/o365relay/relay/spool"
)

// forward calls the Forwarder with the pending recipients, applying the
// sender rule's rewrite on the way out and containing a panic to this
// message.
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

// panicError is a panic inside the forwarder, by its type only. Such
// panics are counted durably in the message's state (spool.State.Panics).
type panicError struct{ v any }

func (p *panicError) Error() string { return fmt.Sprintf("panic during delivery: %v", p.v) }

// errAttemptPanicked: an attempt panicked outside the forwarder (a bug in
// the scheduler's own bookkeeping); the message is retried later.
var errAttemptPanicked = errors.New("delivery attempt panicked")

// guarded runs one attempt, containing a panic to the message: a message
// whose attempts panic three times is moved to corrupt/ with the reason,
// never retried forever. (Panics inside the forwarder are counted durably in
// the message's state by judge; this guard covers the rest.)
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
