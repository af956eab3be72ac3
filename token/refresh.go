package token

import (
	"context"
	"math/rand/v2"
	"time"
)

func (s *EntraSource) signal() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// backoffLocked is the delay after the s.failures-th consecutive failure:
// exponential from backoffMin, capped at backoffMax, jittered in [d/2, d]
// so that many relays do not retry in step.
func (s *EntraSource) backoffLocked() time.Duration {
	d := s.backoffMin
	for i := 1; i < s.failures && d < s.backoffMax; i++ {
		d *= 2
	}
	d = min(d, s.backoffMax)
	half := d / 2
	return half + rand.N(d-half+1) // math/rand/v2: jitter needs no crypto
}

// nextRefreshLocked is when Run fetches next (rule in the EntraSource doc).
func (s *EntraSource) nextRefreshLocked(now time.Time) time.Time {
	at := now
	if !s.tok.Value.IsZero() {
		exp := s.tok.ExpiresOn
		life := exp.Sub(s.obtained)
		lead := min(max(refreshLeadMin, life/3), life/2)
		at = exp.Add(-lead)
		if !s.refreshOn.IsZero() && s.refreshOn.Before(at) {
			at = s.refreshOn
		}
		if floor := s.lastRefresh.Add(minRefreshInterval); at.Before(floor) {
			at = floor
		}
	}
	if s.lastErr != nil && at.Before(s.nextAttempt) {
		at = s.nextAttempt
	}
	return at
}

// Run keeps a fresh token until ctx is done (then it returns nil): it
// fetches one at once if none is held and then refreshes by the rule in the
// EntraSource doc comment, in the background, so that no caller waits for Entra
// ID in steady state. Run a single Run per Source.
func (s *EntraSource) Run(ctx context.Context) error {
	for {
		s.mu.Lock()
		closed := s.closed
		s.mu.Unlock()
		if ctx.Err() != nil || closed {
			return nil
		}
		s.mu.Lock()
		d := s.nextRefreshLocked(s.clock()).Sub(s.clock())
		s.mu.Unlock()
		if d <= 0 {
			_, _ = s.fetchShared(ctx) // outcome recorded and logged by fetch
			continue
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-s.kick:
			// Another caller fetched: recompute from the new state.
			t.Stop()
		case <-t.C:
		}
	}
}
