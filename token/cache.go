package token

import (
	"context"
	"time"
)

// usableLocked: a token is handed out while it stays valid for expiryMargin
// (or a quarter of its lifetime, for very short test lifetimes).
func (s *EntraSource) usableLocked(now time.Time) bool {
	if s.tok.Value.IsZero() {
		return false
	}
	margin := min(expiryMargin, s.tok.ExpiresOn.Sub(s.obtained)/4)
	return now.Before(s.tok.ExpiresOn.Add(-margin))
}

// backoffErrLocked returns the last error while a backoff is running.
func (s *EntraSource) backoffErrLocked(now time.Time) error {
	if s.lastErr != nil && now.Before(s.nextAttempt) {
		return s.lastErr
	}
	return nil
}

// Token returns the held token, or fetches one (single flight) if none is
// usable, unless a backoff is running, in which case it returns the last
// error immediately.
func (s *EntraSource) Token(ctx context.Context) (Token, error) {
	return s.heldOrFetch(ctx, func(Token) bool { return true })
}

// Refresh fetches a token other than rejected (Exchange answered 535 to
// it). If the held token already differs from rejected, it is returned
// without a request; concurrent Refresh calls share one request.
func (s *EntraSource) Refresh(ctx context.Context, rejected Token) (Token, error) {
	return s.heldOrFetch(ctx, func(t Token) bool { return t.Value != rejected.Value })
}

// heldOrFetch returns the held token if it is usable and ok accepts it;
// otherwise the backoff's error while one runs, or a shared fetch.
func (s *EntraSource) heldOrFetch(ctx context.Context, ok func(Token) bool) (Token, error) {
	s.mu.Lock()
	now := s.clock()
	if s.usableLocked(now) && ok(s.tok) {
		t := s.tok
		s.mu.Unlock()
		return t, nil
	}
	if err := s.backoffErrLocked(now); err != nil {
		s.mu.Unlock()
		return Token{}, err
	}
	s.mu.Unlock()
	return s.fetchShared(ctx)
}
