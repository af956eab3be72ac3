package entratest

import (
	"context"
	"fmt"
	"net/http"
)

// TokenRequests counts POSTs to the token endpoint, whatever their outcome.
func (s *Server) TokenRequests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokenReqs
}

// WaitTokenRequests blocks until at least n token requests were received or
// ctx is done. Tests use it instead of sleeping.
func (s *Server) WaitTokenRequests(ctx context.Context, n int) error {
	for {
		s.mu.Lock()
		got, ch := s.tokenReqs, s.changed
		s.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("entratest: %d token requests, waited for %d: %w", got, n, ctx.Err())
		}
	}
}

// Requests returns the request log.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

func (s *Server) log(r *http.Request, clientID, outcome string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = append(s.requests, Request{Method: r.Method, Path: r.URL.Path, ClientID: clientID, Outcome: outcome})
}

func (s *Server) countTokenLocked() {
	s.tokenReqs++
	close(s.changed)
	s.changed = make(chan struct{})
}
