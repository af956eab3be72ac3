package delivery

import (
	"context"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/reply"
	"github.com/o365relay/o365relay/relay/upstream"
)

// slots is one mailbox's connection limit and the attempts holding it. The
// scheduler is the only owner of this number: every attempt, scheduled or
// DeliverNow, takes a slot before it asks the upstream client for a
// connection, so the upstream pool never has to make anyone wait.
//
// The limit starts at Limits.Connections (Exchange allows three per
// mailbox, docs/exchange.md#connections-per-mailbox; 0 = no limit of ours). A 432 4.3.2 at
// AUTH while other attempts of ours hold connections means someone else (an
// application, another relay, a connection Exchange has not released yet)
// uses a slot: the limit drops to the number we hold and the message waits
// for one of them. It grows back by one per RestoreAfter without another
// 432.
type slots struct {
	inflight  int
	lowered   int // 0: not lowered; else the limit a 432 taught us
	loweredAt time.Time
	waiting   []envelope.ID // scheduled messages that found every slot busy
	freed     chan struct{} // closed and replaced when a slot frees
}

// limit is the number of attempts that may run, max being the configured
// one (≤ 0: unlimited).
func (b *slots) limit(max int) int {
	if b.lowered > 0 && (max <= 0 || b.lowered < max) {
		return b.lowered
	}
	return max
}

// slotsLocked returns mailbox's slots. Callers hold mu.
func (s *Scheduler) slotsLocked(mailbox string) *slots {
	k := strings.ToLower(mailbox)
	b := s.slots[k]
	if b == nil {
		b = &slots{freed: make(chan struct{})}
		s.slots[k] = b
	}
	return b
}

// restoreLocked raises a lowered limit by one per RestoreAfter.
func (s *Scheduler) restoreLocked(mailbox string, b *slots, max int, now time.Time) {
	if b.lowered == 0 || now.Sub(b.loweredAt) < s.o.RestoreAfter {
		return
	}
	b.lowered++
	b.loweredAt = now
	if max <= 0 || b.lowered >= max {
		b.lowered = 0
	}
	s.log.Info("raising the mailbox's connection limit again after 432 4.3.2", zap.String("mailbox", mailbox), zap.Int("limit", b.limit(max)))
	s.wakeWaitingLocked(b)
}

// enter takes one of mailbox's slots for a scheduled attempt, or notes id
// as waiting for one: a worker never waits on a busy mailbox.
func (s *Scheduler) enter(id envelope.ID, mailbox string, max int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.slotsLocked(mailbox)
	s.restoreLocked(mailbox, b, max, s.o.Clock())
	if n := b.limit(max); n > 0 && b.inflight >= n {
		b.waiting = append(b.waiting, id)
		return false
	}
	b.inflight++
	return true
}

// enterWait takes a slot for DeliverNow, waiting for one: the client is
// on the line for this very message.
func (s *Scheduler) enterWait(ctx context.Context, mailbox string, max int) error {
	for {
		s.mu.Lock()
		b := s.slotsLocked(mailbox)
		s.restoreLocked(mailbox, b, max, s.o.Clock())
		if n := b.limit(max); n <= 0 || b.inflight < n {
			b.inflight++
			s.mu.Unlock()
			return nil
		}
		ch := b.freed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// leave gives the slot back and makes the mailbox's waiting messages due
// again at the time they were due (one that has not been released yet is
// made due when it is).
func (s *Scheduler) leave(mailbox string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.slotsLocked(mailbox)
	b.inflight--
	s.wakeWaitingLocked(b)
}

func (s *Scheduler) wakeWaitingLocked(b *slots) {
	close(b.freed)
	b.freed = make(chan struct{})
	for _, id := range b.waiting {
		if s.running[id] != nil {
			s.early[id] = true
		} else if at, ok := s.parked[id]; ok {
			s.scheduleLocked(id, at)
		}
	}
	b.waiting = nil
}

// lowerAfter432 reacts to Exchange's "432 4.3.2 Concurrent connections
// limit exceeded" at AUTH on a new connection of the calling attempt. If
// other attempts of ours hold connections, the limit drops to their number
// and it returns true: the message waits for one of them, the attempt not
// counted (id waits among the mailbox's parked messages). Otherwise the slots are someone else's: the limit drops to one
// and the 432 is the message's to report (retried soon, per classify).
func (s *Scheduler) lowerAfter432(id envelope.ID, mailbox string, re *reply.Error, now time.Time) bool {
	if re == nil || !upstream.ConcurrencyLimited(re) {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.slotsLocked(mailbox)
	others := b.inflight - 1
	b.loweredAt = now
	if others <= 0 {
		b.lowered = 1
		return false
	}
	if b.lowered == 0 || others < b.lowered {
		b.lowered = others
		s.log.Warn("Exchange refused a connection with 432 4.3.2; lowering this mailbox's connection limit for a while",
			zap.String("mailbox", mailbox), zap.Int("limit", others))
	}
	b.waiting = append(b.waiting, id) // due again when one of ours frees
	return true
}

// ConnectionLimit reports a mailbox's current connection limit: the
// configured one until a 432 4.3.2 lowered it (0: no limit).
func (s *Scheduler) ConnectionLimit(mailbox string) int {
	max := 0
	if s.o.Limits != nil {
		max = s.o.Limits(mailbox).Connections
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.slotsLocked(mailbox).limit(max)
}
