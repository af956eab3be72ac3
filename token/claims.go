package token

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Claims is what an access token says about itself, for `o365relay doctor`
// to show the user (docs/azure.md#rbac-for-applications: a missing
// SMTP.SendAsApp role means azurestep.SendAsAppConsent was skipped — or
// App RBAC is used, so it is a warning, not fatal).
type Claims struct {
	Audience []string // "https://outlook.office365.com" for SMTP
	Issuer   string   // "https://sts.windows.net/<tenant>/"
	TenantID string   // tid
	AppID    string   // appid (v1 tokens) or azp (v2)
	ObjectID string   // oid: the service principal New-ServicePrincipal must name
	Roles    []string // application permissions granted with admin consent
	// ManagedIdentityResourceID is xms_mirid, the Azure resource ID of the
	// managed identity a token was issued to ("" for an app registration).
	ManagedIdentityResourceID string
	ExpiresAt                 time.Time
	IssuedAt                  time.Time
}

// ParseClaims decodes the token's JWT payload WITHOUT verifying it: only
// Exchange Online can verify it, and the doctor only displays what it says.
// Never use the result for an authorization decision.
func ParseClaims(tok Token) (Claims, error) {
	parts := strings.Split(tok.Value.Reveal(), ".")
	if len(parts) != 3 {
		return Claims{}, errors.New("token: access token is not a JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return Claims{}, errors.New("token: access token payload is not base64url")
	}
	var raw struct {
		Aud   json.RawMessage `json:"aud"`
		Iss   string          `json:"iss"`
		Tid   string          `json:"tid"`
		AppID string          `json:"appid"`
		Azp   string          `json:"azp"`
		Oid   string          `json:"oid"`
		Roles []string        `json:"roles"`
		MIRID string          `json:"xms_mirid"`
		Exp   json.Number     `json:"exp"`
		Iat   json.Number     `json:"iat"`
	}
	if err := json.Unmarshal(payload, &raw); err != nil {
		return Claims{}, errors.New("token: access token payload is not JSON claims")
	}
	c := Claims{Issuer: raw.Iss, TenantID: raw.Tid, AppID: raw.AppID, ObjectID: raw.Oid, Roles: raw.Roles, ManagedIdentityResourceID: raw.MIRID}
	if c.AppID == "" {
		c.AppID = raw.Azp
	}
	if len(raw.Aud) > 0 {
		var one string
		if json.Unmarshal(raw.Aud, &one) == nil {
			c.Audience = []string{one}
		} else if err := json.Unmarshal(raw.Aud, &c.Audience); err != nil {
			return Claims{}, fmt.Errorf("token: aud claim is neither a string nor an array")
		}
	}
	if c.ExpiresAt, err = numericDate(raw.Exp); err != nil {
		return Claims{}, fmt.Errorf("token: exp claim: %w", err)
	}
	if c.IssuedAt, err = numericDate(raw.Iat); err != nil {
		return Claims{}, fmt.Errorf("token: iat claim: %w", err)
	}
	return c, nil
}

func numericDate(n json.Number) (time.Time, error) {
	if n == "" {
		return time.Time{}, nil
	}
	f, err := n.Float64()
	if err != nil {
		return time.Time{}, errors.New("not a number")
	}
	return time.Unix(int64(f), 0), nil
}

// HasRole reports whether the token carries an application role, e.g.
// "SMTP.SendAsApp".
func (c Claims) HasRole(role string) bool {
	for _, r := range c.Roles {
		if r == role {
			return true
		}
	}
	return false
}
