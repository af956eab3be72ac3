package token

import "time"

// Status is the EntraSource's state, for /readyz and `o365relay doctor`.
type Status struct {
	HasToken      bool      // a token is held that has not expired
	ExpiresOn     time.Time // of the held token
	LastRefresh   time.Time // last successful token request
	LastError     error     // of the last token request; nil after a success
	EverSucceeded bool
	NextRefresh   time.Time // when Run will fetch next
}

// Status reports the EntraSource's state.
func (s *EntraSource) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock()
	st := Status{
		LastRefresh:   s.lastRefresh,
		LastError:     s.lastErr,
		EverSucceeded: s.everOK,
		NextRefresh:   s.nextRefreshLocked(now),
	}
	if !s.tok.Value.IsZero() && now.Before(s.tok.ExpiresOn) {
		st.HasToken, st.ExpiresOn = true, s.tok.ExpiresOn
	}
	return st
}
