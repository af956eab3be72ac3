package token

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/confidential"
	"github.com/o365relay/o365relay/config/secret"
	"go.uber.org/zap"
)

// fetchShared joins or starts the one in-flight token request and waits for
// it or for ctx.
func (s *EntraSource) fetchShared(ctx context.Context) (Token, error) {
	ch := s.sf.DoChan("token", func() (any, error) {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return Token{}, &EntraError{Description: errClosed.Error()}
		}
		s.wg.Add(1)
		s.mu.Unlock()
		defer s.wg.Done()
		return s.fetch()
	})
	select {
	case r := <-ch:
		t, _ := r.Val.(Token)
		return t, r.Err
	case <-ctx.Done():
		return Token{}, &EntraError{Description: "gave up waiting for the token request: " + ctx.Err().Error()}
	}
}

// fetch makes one token request and records its outcome.
func (s *EntraSource) fetch() (Token, error) {
	ctx, cancel := context.WithTimeout(s.ctx, requestTimeout)
	defer cancel()
	start := time.Now()
	ar, err := s.acquire(ctx)
	// MSAL computes ExpiresOn from time.Now() when it parses expires_in;
	// re-base the lifetime on the injected clock.
	realNow := time.Now()
	requestDuration.Observe(realNow.Sub(start).Seconds())
	now := s.clock()

	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.signal()
	if err == nil && ar.AccessToken == "" {
		err = errors.New("token endpoint returned no access token")
	}
	if err != nil {
		ee := s.explain(err)
		if ee.Code() == 700027 && s.thumbprint != "" {
			ee.Hint += fmt.Sprintf("; this relay presents the certificate with thumbprint %s", s.thumbprint)
		}
		requestsTotal.WithLabelValues("failure", entraCode(ee)).Inc()
		refreshFailures.Inc()
		s.failures++
		d := s.backoffLocked()
		s.nextAttempt = now.Add(d)
		s.lastErr = ee
		fields := []zap.Field{zap.String("credential", s.credKind), zap.Error(ee), zap.Bool("temporary", ee.Temporary()),
			zap.Int("failures", s.failures), zap.Duration("retry_in", d)}
		if !s.tok.Value.IsZero() {
			fields = append(fields, zap.Time("held_token_expires", s.tok.ExpiresOn))
		}
		s.log.Warn("token request failed", fields...)
		return Token{}, s.lastErr
	}
	s.acceptedLocked(ar, realNow, now)
	return s.tok, nil
}

// entraCode is the metric label for a failed request.
func entraCode(ee *EntraError) string {
	switch {
	case ee.Code() != 0:
		return fmt.Sprint(ee.Code())
	case ee.HTTPStatus != 0:
		return fmt.Sprintf("http_%d", ee.HTTPStatus)
	}
	return "network"
}

// acceptedLocked holds the token of a successful request.
func (s *EntraSource) acceptedLocked(ar confidential.AuthResult, realNow, now time.Time) {
	lifetime := ar.ExpiresOn.Sub(realNow)
	s.tok = Token{Value: secret.Secret(ar.AccessToken), ExpiresOn: now.Add(lifetime)}
	s.obtained = now
	s.refreshOn = time.Time{}
	if ro := ar.Metadata.RefreshOn; !ro.IsZero() {
		s.refreshOn = now.Add(ro.Sub(realNow))
	}
	s.lastRefresh = now
	s.lastErr = nil
	s.everOK = true
	s.failures = 0
	s.nextAttempt = time.Time{}
	requestsTotal.WithLabelValues("success", "").Inc()
	expiryTimestamp.Set(float64(s.tok.ExpiresOn.Unix()))
	s.log.Info("token acquired", zap.String("credential", s.credKind), zap.Time("expires", s.tok.ExpiresOn),
		zap.Duration("lifetime", lifetime.Round(time.Second)), zap.Time("next_refresh", s.nextRefreshLocked(now)))
}
