package exchangetest

import (
	"crypto/rsa"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/o365relay/o365relay/config/secret"
)

// Claims are the access-token claims the fake checks. Zero fields take the
// values a correct token from the fake Entra ID would have.
type Claims struct {
	AppID     string
	Tenant    string
	Audience  string    // default AudienceResource
	Roles     []string  // default [SMTP.SendAsApp]; use []string{} for none
	NotBefore time.Time // default IssuedAt
	IssuedAt  time.Time // default time.Now()
	Expires   time.Time // default IssuedAt + 1 h
}

// SignToken mints an app-only access token like Entra ID's for the
// Exchange Online resource (RS256, v1 claims appid/tid/roles), for tests
// and the demo's fake token service.
func SignToken(key *rsa.PrivateKey, c Claims) (secret.Secret, error) {
	if c.IssuedAt.IsZero() {
		c.IssuedAt = time.Now()
	}
	if c.NotBefore.IsZero() {
		c.NotBefore = c.IssuedAt
	}
	if c.Expires.IsZero() {
		c.Expires = c.IssuedAt.Add(time.Hour)
	}
	if c.Audience == "" {
		c.Audience = AudienceResource
	}
	if c.Roles == nil {
		c.Roles = []string{RoleSendAsApp}
	}
	roles := make([]any, len(c.Roles))
	for i, r := range c.Roles {
		roles[i] = r
	}
	t := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{
		"aud":   c.Audience,
		"iss":   "https://sts.windows.net/" + c.Tenant + "/",
		"tid":   c.Tenant,
		"appid": c.AppID,
		"roles": roles,
		"iat":   c.IssuedAt.Unix(),
		"nbf":   c.NotBefore.Unix(),
		"exp":   c.Expires.Unix(),
	})
	s, err := t.SignedString(key)
	if err != nil {
		return "", err
	}
	return secret.Secret(s), nil
}
