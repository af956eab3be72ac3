package relay

import (
	"context"
	"fmt"
	"io"

	"github.com/o365relay/o365relay/relay/delivery"
	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/reply"
)

// AckMode says when the relay answers 250 to a client.
type AckMode string

const (
	// AckSpool answers once the message is durable in the spool, then
	// delivers. The client never waits for Exchange; a message Exchange
	// later refuses permanently goes to failed/ and is logged and counted.
	// Pick it for applications that treat any 4xx as a reason to drop mail
	// or cannot wait (printers, cron), and for bursts.
	AckSpool AckMode = "spool"
	// AckUpstream spools the message, then makes one delivery attempt while
	// the client waits: Exchange's permanent refusal (e.g. 554 5.2.252
	// SendAsDenied) goes straight back to the application, which can show
	// it to a person; a transient failure is acknowledged from the spool
	// and retried, so the application still never has to retry. Pick it
	// when the application reports send errors to a user.
	AckUpstream AckMode = "upstream"
)

// spooler is the part of the spool the intake needs.
type spooler interface {
	Put(env *envelope.Envelope, body io.Reader) error
}

// scheduler is the part of the delivery scheduler the intake needs.
type scheduler interface {
	Enqueued(id envelope.ID)
	DeliverNow(ctx context.Context, id envelope.ID) (*delivery.Outcome, error)
}

// sink is the smtpd.Sink of the daemon: spool first, always, so a 250 is
// never given for a message that exists only in memory (docs/design.md#what-250-means).
type sink struct {
	spool spooler
	sched scheduler
	mode  AckMode
}

func (k *sink) Submit(ctx context.Context, env *envelope.Envelope, body io.Reader) (string, error) {
	if err := k.spool.Put(env, body); err != nil {
		messagesReceived.WithLabelValues(env.Mailbox, "refused").Inc()
		return "", err
	}
	messagesReceived.WithLabelValues(env.Mailbox, "accepted").Inc()
	// From here on the message is durable: whatever happens below, the
	// client gets a 250 unless Exchange refused the message for good.
	if k.mode != AckUpstream {
		k.sched.Enqueued(env.ID)
		return fmt.Sprintf("OK %s queued", env.ID), nil
	}
	out, err := k.sched.DeliverNow(ctx, env.ID)
	if err != nil || out == nil {
		// A local fault in the attempt (spool I/O, the message already
		// being delivered): it is on disk, the workers deliver it.
		k.sched.Enqueued(env.ID)
		return fmt.Sprintf("OK %s queued", env.ID), nil
	}
	switch {
	case len(out.Delivered) == len(env.To):
		return fmt.Sprintf("OK %s delivered", env.ID), nil
	case out.Removed && len(out.Delivered) == 0:
		// Refused for good for every recipient: the scheduler removed it,
		// the client is told and it is the client's mail again.
		if re := reply.As(out.Err); re != nil && !re.Temporary() {
			return "", re
		}
		for _, r := range env.To {
			if re := out.Failed[r]; re != nil {
				return "", re
			}
		}
		// Removed without a verdict: the record could not be read back
		// (moved to corrupt/). Nothing will deliver it, so the client
		// keeps the message and tries again.
		return "", reply.Wrap(out.Err, 451, reply.EnhancedCode{4, 3, 0}, "Local error in processing; try again")
	case len(out.Delivered) > 0 || len(out.Failed) > 0:
		return fmt.Sprintf("OK %s delivered to %d of %d recipients; the rest are retried or reported",
			env.ID, len(out.Delivered), len(env.To)), nil
	}
	// Transient: it stays in the spool and is retried by the workers.
	if out.Err == nil {
		// Not attempted yet: the mailbox's pacing or hold put it off.
		return fmt.Sprintf("OK %s queued (the mailbox's send rate or a hold delays it; the relay will send it)", env.ID), nil
	}
	// Deferred by Exchange, or the path to it (token, TLS, AUTH) failed.
	return fmt.Sprintf("OK %s queued (the attempt did not get through; the relay will retry)", env.ID), nil
}
