package entratest

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func (s *Server) checkFederated(assertion string, a *App) *entraErr {
	var lastIss, lastSub, lastAud string
	for _, f := range a.Federated {
		aud := f.Audience
		if aud == "" {
			aud = DefaultFederatedAudience
		}
		for _, k := range f.Keys {
			claims := jwt.MapClaims{}
			_, err := jwt.NewParser(jwt.WithValidMethods([]string{"RS256", "PS256"}), jwt.WithoutClaimsValidation()).
				ParseWithClaims(assertion, claims, func(*jwt.Token) (any, error) { return k, nil })
			if err != nil {
				continue
			}
			iss, _ := claims["iss"].(string)
			sub, _ := claims["sub"].(string)
			auds, _ := claims.GetAudience()
			lastIss, lastSub, lastAud = iss, sub, strings.Join(auds, ",")
			if iss != f.Issuer || sub != f.Subject || !contains(auds, aud) {
				continue
			}
			return s.checkTimesAndJTIFederated(claims)
		}
	}
	return &entraErr{http.StatusBadRequest, "invalid_request", 70021, fmt.Sprintf("No matching federated identity record found for presented assertion. Assertion Issuer: '%s'. Assertion Subject: '%s'. Assertion Audience: '%s'.", lastIss, lastSub, lastAud)}
}

// checkTimesAndJTIFederated applies the time checks to a Kubernetes service
// account token, which lives up to 24 h (docs/entra.md#workload-identity) and may carry a jti reused
// across requests while the kubelet has not rotated it: only expiry matters.
func (s *Server) checkTimesAndJTIFederated(c jwt.MapClaims) *entraErr {
	exp, ok := numericTime(c["exp"])
	if !ok {
		return invalidClient(50027, "Invalid JWT token. The token has no 'exp' claim.")
	}
	now := s.clock()
	if now.After(exp.Add(s.skew)) {
		return invalidClient(700024, fmt.Sprintf("Client assertion is not within its valid time range. Current time: %s, expiry time of assertion %s.", now.UTC().Format(time.RFC3339), exp.UTC().Format(time.RFC3339)))
	}
	if nbf, ok := numericTime(c["nbf"]); ok && now.Before(nbf.Add(-s.skew)) {
		return invalidClient(700024, "Client assertion is not within its valid time range: not yet valid.")
	}
	return nil
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}
