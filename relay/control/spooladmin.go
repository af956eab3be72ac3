package control

import (
	"context"
	"errors"
	"fmt"

	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/spool"
)

// Admin is queue administration: what `o365relay queue` does. The daemon
// serves it on the control socket (Client implements it on the other end);
// SpoolAdmin implements it on a spool, in the daemon and, when no daemon
// runs, in the command itself.
type Admin interface {
	List(ctx context.Context) ([]Message, error)
	ListFailed(ctx context.Context) ([]Message, error)
	// Get finds id in the queue or in failed/ (spool.ErrNotFound).
	Get(ctx context.Context, id envelope.ID) (*Message, error)
	// Retry makes a queued message due now, or moves a failed one back
	// into the queue.
	Retry(ctx context.Context, id envelope.ID) error
	// RetryAll retries every queued and failed message; it returns how
	// many.
	RetryAll(ctx context.Context) (int, error)
	Delete(ctx context.Context, id envelope.ID) error
}

// SpoolAdmin is Admin on an open spool. The hooks tell a scheduler about a
// change at once (nil: no scheduler, as in the command without a daemon).
type SpoolAdmin struct {
	Spool *spool.Spool
	// Retried is called after id was made due (mailbox: where it goes).
	Retried func(id envelope.ID, mailbox string)
	// Deleted is called after id left the spool.
	Deleted func(id envelope.ID)
}

var _ Admin = (*SpoolAdmin)(nil)

func messages(es []spool.Entry, where string) []Message {
	out := make([]Message, len(es))
	for i, e := range es {
		out[i] = Message{Where: where, Envelope: e.Envelope, State: e.State}
	}
	return out
}

// List lists the queued messages, oldest first.
func (a *SpoolAdmin) List(context.Context) ([]Message, error) {
	es, err := a.Spool.List()
	return messages(es, InQueue), err
}

// ListFailed lists the messages in failed/.
func (a *SpoolAdmin) ListFailed(context.Context) ([]Message, error) {
	es, err := a.Spool.ListFailed()
	return messages(es, InFailed), err
}

// Get finds a message in the queue or in failed/.
func (a *SpoolAdmin) Get(ctx context.Context, id envelope.ID) (*Message, error) {
	e, err := a.Spool.Get(id)
	if err == nil {
		return &Message{Where: InQueue, Envelope: e.Envelope, State: e.State}, nil
	}
	if !errors.Is(err, spool.ErrNotFound) {
		return nil, err
	}
	fs, err := a.ListFailed(ctx)
	if err != nil {
		return nil, err
	}
	for i := range fs {
		if fs[i].Envelope.ID == id {
			return &fs[i], nil
		}
	}
	return nil, fmt.Errorf("%w: %s", spool.ErrNotFound, id)
}

// Retry makes a message due now.
func (a *SpoolAdmin) Retry(ctx context.Context, id envelope.ID) error {
	m, err := a.Get(ctx, id)
	if err != nil {
		return err
	}
	return a.retry(m)
}

func (a *SpoolAdmin) retry(m *Message) error {
	if err := a.Spool.Retry(m.Envelope.ID); err != nil {
		return err
	}
	if a.Retried != nil {
		a.Retried(m.Envelope.ID, m.Envelope.Mailbox)
	}
	return nil
}

// RetryAll retries every queued and failed message.
func (a *SpoolAdmin) RetryAll(ctx context.Context) (int, error) {
	q, err := a.List(ctx)
	if err != nil {
		return 0, err
	}
	f, err := a.ListFailed(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, m := range append(q, f...) {
		if err := a.retry(&m); err != nil {
			if errors.Is(err, spool.ErrNotFound) {
				continue // delivered or deleted meanwhile
			}
			return n, err
		}
		n++
	}
	return n, nil
}

// Delete removes a message from the queue or failed/.
func (a *SpoolAdmin) Delete(_ context.Context, id envelope.ID) error {
	if err := a.Spool.Delete(id); err != nil {
		return err
	}
	if a.Deleted != nil {
		a.Deleted(id)
	}
	return nil
}
