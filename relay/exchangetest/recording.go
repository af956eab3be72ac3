package exchangetest

import (
	"context"
	"fmt"

	"go.uber.org/zap"
)

// Reset clears recorded messages, counters, violations and pending faults.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.messages = nil
	s.faults = nil
	s.violations = nil
	s.stats = Stats{MaxConcurrentPerMailbox: make(map[string]int)}
}

// Messages returns a copy of the accepted messages in order of acceptance.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.messages...)
}

// WaitMessages blocks until at least n messages were accepted or ctx ends.
func (s *Server) WaitMessages(ctx context.Context, n int) error {
	stop := context.AfterFunc(ctx, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.cond.Broadcast()
	})
	defer stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.messages) < n {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("exchangetest: have %d of %d messages: %w", len(s.messages), n, err)
		}
		s.cond.Wait()
	}
	return nil
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.MaxConcurrentPerMailbox = make(map[string]int, len(s.stats.MaxConcurrentPerMailbox))
	for k, v := range s.stats.MaxConcurrentPerMailbox {
		st.MaxConcurrentPerMailbox[k] = v
	}
	return st
}

// Violations lists protocol violations the clients made: credentials on a
// plaintext connection, a mechanism name not in upper case, an AUTH line
// longer than RFC 5321 §4.5.3.1.4 allows, a malformed XOAUTH2 response.
func (s *Server) Violations() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.violations...)
}

// PlainAuthAttempts is the number of AUTH commands seen before STARTTLS.
func (s *Server) PlainAuthAttempts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats.AuthBeforeTLS
}

func (s *Server) violation(format string, args ...any) {
	v := fmt.Sprintf(format, args...)
	s.log.Warn("client protocol violation", zap.String("violation", v))
	s.mu.Lock()
	defer s.mu.Unlock()
	s.violations = append(s.violations, v)
}
