package delivery

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/spool"
)

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
// a worker first looks at it (check).
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

// attemptOwned is a worker's attempt of id, which it took from the due
// queue: the message is released to its next due time, or parked.
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
