package token

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/confidential"
	"go.uber.org/zap"
)

// expiryWarning is how long before its end a certificate is reported as
// expiring: Entra refuses an expired one (AADSTS700027, azurestep.Credential),
// and a month leaves time to upload and roll out its successor.
const expiryWarning = 30 * 24 * time.Hour

// warnExpiry logs an expired or soon-expiring certificate.
func (s *EntraSource) warnExpiry(c *Certificate) {
	switch now := s.clock(); {
	case now.After(c.NotAfter()):
		s.log.Error("certificate has expired; upload a new one (Certificates & secrets)", zap.Stringer("certificate", c))
	case now.Add(expiryWarning).After(c.NotAfter()):
		s.log.Warn("certificate expires within 30 days; upload its successor (Certificates & secrets)",
			zap.Stringer("certificate", c), zap.Time("not_after", c.NotAfter()))
	}
}

// Certificate returns the certificate that signs assertions now (nil for a
// secret or federated credential).
func (s *EntraSource) Certificate() *Certificate {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cert
}

// RotateCertificate switches to c only after Entra ID has accepted it: it
// makes one token request signed with c, outside the single flight and with
// a client of its own, and on success signs every later assertion with c and
// holds the token it got. On failure (c not uploaded yet, AADSTS700027; an
// outage) the current certificate stays in use and the error says why, so a
// rotation can never leave the relay without a working credential. Rotating
// to the certificate already in use is a no-op.
func (s *EntraSource) RotateCertificate(ctx context.Context, c *Certificate) error {
	s.mu.Lock()
	cur, closed := s.cert, s.closed
	if !closed {
		s.wg.Add(1) // Close waits for this request too
	}
	s.mu.Unlock()
	if closed {
		return errClosed
	}
	defer s.wg.Done()
	switch {
	case cur == nil:
		return errors.New("token: the relay does not use a certificate; restart it to change the kind of credential")
	case c == nil || c.key == nil:
		return errors.New("token: certificate has no private key")
	case cur.ThumbprintSHA256() == c.ThumbprintSHA256():
		return nil
	}
	client, err := s.newClient(confidential.NewCredFromAssertionCallback(
		func(_ context.Context, o confidential.AssertionRequestOptions) (string, error) {
			return s.assertionWith(c, o)
		}))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	defer context.AfterFunc(s.ctx, cancel)() // Close cancels it
	start := time.Now()
	ar, err := client.AcquireTokenByCredential(ctx, s.scopes)
	realNow := time.Now()
	requestDuration.Observe(realNow.Sub(start).Seconds())
	if err == nil && ar.AccessToken == "" {
		err = errors.New("token endpoint returned no access token")
	}
	if err != nil {
		ee := toEntraError(err)
		if ee.Code() == 700027 {
			ee.Hint += fmt.Sprintf("; the new certificate has thumbprint %s", c.ThumbprintSHA1Hex())
		}
		requestsTotal.WithLabelValues("failure", entraCode(ee)).Inc()
		return ee
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.signal()
	s.cert, s.thumbprint = c, c.ThumbprintSHA1Hex()
	s.acceptedLocked(ar, realNow, s.clock())
	s.warnExpiry(c)
	return nil
}
