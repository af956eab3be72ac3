package token

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/o365relay/o365relay/config/secret"
)

// Algorithm is the client assertion's signature algorithm.
type Algorithm string

const (
	// PS256 (RSASSA-PSS, SHA-256) with an x5t#S256 header is what Microsoft
	// documents today and MSAL sends (docs/entra.md#client-assertion).
	PS256 Algorithm = "PS256"
	// RS256 (PKCS #1 v1.5) with a SHA-1 x5t header is the older form Entra
	// still accepts and ADFS requires.
	RS256 Algorithm = "RS256"
)

// assertionLifetime is exp−nbf. Microsoft: "keep it short - 5-10 minutes
// after nbf at most" (Microsoft's certificate credentials page, docs/entra.md#client-assertion).
// The assertion is used at once, so five minutes only has to cover clock
// skew between this host and Entra.
const assertionLifetime = 5 * time.Minute

// AssertionParams say what a client assertion is for.
type AssertionParams struct {
	ClientID string
	// Audience is the token endpoint the assertion is sent to, exactly as
	// MSAL passes it in AssertionRequestOptions.TokenEndpoint.
	Audience  string
	Algorithm Algorithm // PS256 or RS256; no default (config has it)
	X5C       bool      // send the chain in x5c (subject name + issuer auth)
	Now       time.Time
}

// Assertion signs a client assertion (RFC 7523 §2.2, with the claims and
// headers of Microsoft's certificate-credentials page): header alg, typ and
// x5t#S256 (PS256) or x5t (RS256); claims aud (a single string, as MSAL
// sends it — jwt.RegisteredClaims would marshal an array), iss = sub = client
// ID, a fresh random jti, nbf = iat = now, exp = now + 5 min.
func (c *Certificate) Assertion(p AssertionParams) (secret.Secret, error) {
	if c == nil || c.key == nil {
		return "", errors.New("token: no certificate key")
	}
	if p.ClientID == "" || p.Audience == "" {
		return "", errors.New("token: assertion needs a client ID and an audience")
	}
	jti, err := newUUID()
	if err != nil {
		return "", err
	}
	now := p.Now.Truncate(time.Second)
	claims := jwt.MapClaims{
		"aud": p.Audience,
		"iss": p.ClientID,
		"sub": p.ClientID,
		"jti": jti,
		"nbf": now.Unix(),
		"iat": now.Unix(),
		"exp": now.Add(assertionLifetime).Unix(),
	}
	var tok *jwt.Token
	switch p.Algorithm {
	case PS256:
		tok = jwt.NewWithClaims(jwt.SigningMethodPS256, claims)
		tok.Header["x5t#S256"] = c.ThumbprintSHA256()
	case RS256:
		tok = jwt.NewWithClaims(jwt.SigningMethodRS256, claims)
		tok.Header["x5t"] = c.thumbprintSHA1()
	default:
		return "", fmt.Errorf("token: assertion algorithm %q not supported; use PS256 or RS256", p.Algorithm)
	}
	if p.X5C {
		// RFC 7515 §4.1.6: standard base64 (not url) DER, signing cert first.
		x5c := []string{base64.StdEncoding.EncodeToString(c.Leaf.Raw)}
		for _, ch := range c.Chain {
			x5c = append(x5c, base64.StdEncoding.EncodeToString(ch.Raw))
		}
		tok.Header["x5c"] = x5c
	}
	s, err := tok.SignedString(c.key)
	if err != nil {
		// golang-jwt's signing errors name the key type, never the key.
		return "", fmt.Errorf("token: signing client assertion: %w", err)
	}
	return secret.Secret(s), nil
}

// newUUID returns a random (version 4) UUID from crypto/rand; jti must be
// unique (RFC 7519 §4.1.7) and Entra rejects a replayed assertion.
func newUUID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("token: jti: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), nil
}
