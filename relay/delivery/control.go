package delivery

import (
	"go.uber.org/zap"

	"github.com/o365relay/o365relay/relay/envelope"
)

// Retried tells the scheduler that an operator made id due now (the
// daemon's control socket, `o365relay queue retry`): it is scheduled at
// once, and a hold on its mailbox ends now, so that it is the probe — the
// operator has presumably fixed what held the mailbox. A token source in
// backoff still answers with its last error until the backoff ends.
func (s *Scheduler) Retried(id envelope.ID, mailbox string) {
	now := s.o.Clock()
	s.log.Info("retry requested", zap.String("id", string(id)), zap.String("mailbox", mailbox))
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.boxes[mailbox]; b != nil && b.HeldUntil.After(now) {
		b.HeldUntil = now
	}
	s.scheduleLocked(id, now)
}

// Deleted tells the scheduler that id left the spool: it is forgotten,
// unless an attempt is running, whose own end finds the message gone.
func (s *Scheduler) Deleted(id envelope.ID) {
	s.log.Info("deleted by request", zap.String("id", string(id)))
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running[id] != nil {
		return
	}
	s.due.remove(id)
	delete(s.parked, id)
	for _, p := range s.pacers {
		p.forget(id)
	}
}
