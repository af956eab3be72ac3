package delivery

import (
	"strings"
	"time"

	"github.com/o365relay/o365relay/relay/envelope"
)

// Limits are one mailbox's pacing limits; 0 disables a limit.
type Limits struct {
	// Rate is messages per minute. Exchange Online accepts 30 a minute per
	// mailbox and delays the excess (docs/exchange.md#messages-per-minute); pacing here
	// keeps the queue, its retries and its log on our side, where it can be
	// seen, instead of inside Exchange.
	Rate int
	// DailyRecipients is recipients per rolling 24 hours. Exchange refuses
	// submissions beyond 10,000 with 554 5.2.0
	// SubmissionQuotaExceededException (docs/exchange.md#recipients-per-day).
	DailyRecipients int
	// Connections is how many attempts for the mailbox run at once (the
	// upstream pool's limit); a worker that finds them all busy moves on
	// to other mail instead of waiting. 0 = no limit here.
	Connections int
}

// dailyWindow is Exchange's rolling recipient-rate window.
const dailyWindow = 24 * time.Hour

// pacer paces one mailbox.
//
// Rate: a token bucket in its GCRA form (a "theoretical arrival time", tat):
// a message may go when tat is at most burst intervals ahead of now, and
// each message moves tat on by one interval (60 s / Rate). The burst is one
// minute's allowance (30 at 30/min): Exchange's per-minute limit delays the
// excess rather than refusing it (docs/exchange.md#messages-per-minute), so a burst of that size costs
// nothing and goes out at once; beyond it messages leave one per interval
// (every 2 s at 30/min), which holds the sustained rate at Rate.
// A message that must wait is given its own slot (booked), so a queue of
// hundreds wakes up one by one instead of all at the next free instant.
//
// Recipients: the accepted recipients of the last 24 h are kept as (time,
// count) entries in memory; a message whose recipients would exceed the
// budget waits until enough entries age out. The log is not persisted:
// after a restart the relay starts from zero and relies on Exchange's
// 554 5.2.0, which pauses the mailbox (holdQuota). Persisting it would cost
// a write per message for a limit few relays reach.
type pacer struct {
	tat    time.Time
	booked map[envelope.ID]time.Time
	sent   []sentEntry // oldest first
	sum    int
}

type sentEntry struct {
	at time.Time
	n  int
}

func newPacer() *pacer { return &pacer{booked: map[envelope.ID]time.Time{}} }

// admit decides whether a message with rcpts pending recipients may be
// attempted at now. If not, it returns when to try again. On admission the
// rate slot and the recipients are taken; settle corrects the recipients
// once the outcome is known.
func (p *pacer) admit(id envelope.ID, rcpts int, l Limits, now time.Time) (time.Time, bool) {
	p.prune(now)
	if l.DailyRecipients > 0 && p.sum > 0 && p.sum+rcpts > l.DailyRecipients {
		// Wait until enough entries leave the window. A message alone
		// larger than the budget still goes when nothing else is counted
		// (otherwise it could never go; Exchange decides).
		need := p.sum + rcpts - l.DailyRecipients
		at := now
		for _, e := range p.sent {
			need -= e.n
			at = e.at.Add(dailyWindow)
			if need <= 0 {
				break
			}
		}
		return at, false
	}
	if l.Rate > 0 {
		interval := time.Minute / time.Duration(l.Rate)
		burst := time.Duration(l.Rate-1) * interval
		if slot, ok := p.booked[id]; ok {
			if now.Before(slot) {
				return slot, false
			}
			delete(p.booked, id)
		} else {
			t := p.tat
			if t.Before(now) {
				t = now
			}
			p.tat = t.Add(interval)
			if t.Sub(now) > burst {
				slot := t.Add(-burst)
				p.booked[id] = slot
				return slot, false
			}
		}
	}
	p.sent = append(p.sent, sentEntry{at: now, n: rcpts})
	p.sum += rcpts
	return time.Time{}, true
}

// settle records that an admitted attempt got delivered recipients accepted
// (fewer than it reserved if it failed, or in part).
func (p *pacer) settle(at time.Time, reserved, delivered int) {
	if reserved == delivered {
		return
	}
	for i := len(p.sent) - 1; i >= 0; i-- {
		if p.sent[i].at.Equal(at) && p.sent[i].n == reserved {
			p.sent[i].n = delivered
			p.sum -= reserved - delivered
			return
		}
	}
}

// forget drops a message's booked slot (it left the queue).
func (p *pacer) forget(id envelope.ID) { delete(p.booked, id) }

func (p *pacer) prune(now time.Time) {
	i := 0
	for i < len(p.sent) && now.Sub(p.sent[i].at) >= dailyWindow {
		p.sum -= p.sent[i].n
		i++
	}
	if i > 0 {
		p.sent = append(p.sent[:0], p.sent[i:]...)
	}
}

// quotaFreesAt is when the oldest counted recipients leave the window: the
// earliest moment Exchange's rolling quota can have room again after a
// 554 5.2.0. ok is false when nothing is counted (e.g. after a restart).
func (p *pacer) quotaFreesAt(now time.Time) (time.Time, bool) {
	p.prune(now)
	if len(p.sent) == 0 {
		return time.Time{}, false
	}
	return p.sent[0].at.Add(dailyWindow), true
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

// admit asks mailbox's pacer whether a message with rcpts pending
// recipients may go at now, and counts a postponement by the limit that
// caused it.
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

// settle tells mailbox's pacer how many of the recipients admitted at at
// were delivered.
func (s *Scheduler) settle(mailbox string, at time.Time, reserved, delivered int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pacerLocked(mailbox).settle(at, reserved, delivered)
}
