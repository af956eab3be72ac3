package entratest

import (
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Principal is a service principal that gets an access token without a
// client-credentials request of its own: a managed identity, for which the
// platform's endpoint (token/mitest) asks Entra ID.
type Principal struct {
	// AppID is the appid claim: a managed identity's client ID.
	AppID string
	// ObjectID is the oid claim: the service principal's object ID.
	ObjectID string
	// Roles are the app roles assigned to the principal (for a managed
	// identity with New-MgServicePrincipalAppRoleAssignment); nil: no
	// roles claim.
	Roles []string
	// Extra claims, e.g. xms_mirid (a managed identity's resource ID).
	Extra map[string]any
}

// Issue signs an access token for p and resource, as the token service
// does for a managed identity's platform endpoint: resource must be the
// Exchange Online resource (Audience), else the AADSTS500011 text comes
// back as the error. lifetime 0 means the server's (SetLifetime).
func (s *Server) Issue(p Principal, resource string, lifetime time.Duration) (token string, issued, expires time.Time, err error) {
	if strings.TrimSuffix(resource, "/") != Audience {
		return "", time.Time{}, time.Time{}, fmt.Errorf("AADSTS500011: The resource principal named %s was not found in the tenant named %s. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant.", resource, s.tenant)
	}
	if lifetime <= 0 {
		s.mu.Lock()
		lifetime = s.lifetime
		s.mu.Unlock()
	}
	extra := map[string]any{"sub": p.ObjectID, "idtyp": "app"}
	for k, v := range p.Extra {
		extra[k] = v
	}
	signed, now, err := s.sign(p.AppID, p.ObjectID, p.Roles, extra, lifetime)
	if err != nil {
		return "", time.Time{}, time.Time{}, fmt.Errorf("entratest: signing: %w", err)
	}
	return signed, now, now.Add(lifetime), nil
}

// sign makes an access token for the Exchange Online resource with the
// claims Exchange looks at (package comment), plus extra.
func (s *Server) sign(appID, objectID string, roles []string, extra map[string]any, lifetime time.Duration) (string, time.Time, error) {
	now := s.clock()
	claims := jwt.MapClaims{
		"aud":   Audience,
		"iss":   "https://sts.windows.net/" + s.tenant + "/",
		"tid":   s.tenant,
		"appid": appID,
		"oid":   objectID,
		"iat":   now.Unix(),
		"nbf":   now.Unix(),
		"exp":   now.Add(lifetime).Unix(),
		"uti":   newUUID(),
		"ver":   "1.0",
	}
	if roles != nil {
		claims["roles"] = roles
	}
	for k, v := range extra {
		claims[k] = v
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, claims)
	tok.Header["kid"] = s.kid
	signed, err := tok.SignedString(s.key)
	return signed, now, err
}
