package entratest

import (
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// decodeThumb accepts base64url (RFC 7515) and standard base64 with padding,
// which MSAL Go sends (docs/entra.md#client-assertion).
func decodeThumb(v any) ([]byte, bool) {
	s, ok := v.(string)
	if !ok || s == "" {
		return nil, false
	}
	for _, enc := range []*base64.Encoding{base64.RawURLEncoding, base64.URLEncoding, base64.StdEncoding, base64.RawStdEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			return b, true
		}
	}
	return nil, false
}

func (s *Server) checkAssertion(assertion string, a *App, endpoint string) *entraErr {
	var hdr map[string]any
	parts := strings.Split(assertion, ".")
	if len(parts) != 3 {
		return invalidClient(50027, "Invalid JWT token. The token is not in JWS compact serialization format.")
	}
	hb, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil || json.Unmarshal(hb, &hdr) != nil {
		return invalidClient(50027, "Invalid JWT token. The header could not be decoded.")
	}
	alg, _ := hdr["alg"].(string)
	if alg != "PS256" && alg != "RS256" {
		return invalidClient(5002738, fmt.Sprintf("Invalid JWT token. '%s' is not a supported signature algorithm. Supported signing algorithms are: 'RS256, RS384, RS512, PS256'", alg))
	}
	s256, hasS256 := decodeThumb(hdr["x5t#S256"])
	s1, hasS1 := decodeThumb(hdr["x5t"])
	if !hasS256 && !hasS1 {
		if len(a.Federated) > 0 {
			return s.checkFederated(assertion, a)
		}
		return invalidClient(700027, "Client assertion failed signature validation. [Reason - The key was not found., Thumbprint of key used by client: '', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '"+a.ClientID+"'.]")
	}
	var thumb []byte
	var cert *x509.Certificate
	if hasS256 {
		// A value of the wrong length (a SHA-1 in x5t#S256) matches
		// nothing and is rejected, as Entra does (docs/entra.md#client-assertion).
		thumb = s256
		for _, c := range a.Certs {
			sum := sha256.Sum256(c.Raw)
			if subtle.ConstantTimeCompare(sum[:], s256) == 1 {
				cert = c
			}
		}
	} else {
		thumb = s1
		for _, c := range a.Certs {
			sum := sha1.Sum(c.Raw)
			if subtle.ConstantTimeCompare(sum[:], s1) == 1 {
				cert = c
			}
		}
	}
	tp := strings.ToUpper(hex.EncodeToString(thumb))
	notFound := invalidClient(700027, fmt.Sprintf("The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '%s', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '%s'. Review the documentation at https://docs.microsoft.com/en-us/graph/deployments to determine the corresponding service endpoint and https://docs.microsoft.com/en-us/graph/api/application-get?view=graph-rest-1.0&tabs=http to build a query request URL, such as 'https://graph.microsoft.com/beta/applications/%s']", tp, a.ClientID, a.ObjectID))
	if cert == nil {
		return notFound
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return notFound
	}
	now := s.clock()
	if now.After(cert.NotAfter) || now.Before(cert.NotBefore) {
		return invalidClient(700027, fmt.Sprintf("Client assertion contains an invalid signature. [Reason - The key used is expired., Thumbprint of key used by client: '%s', Found key 'Start=%s, End=%s']", tp, cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339)))
	}
	claims := jwt.MapClaims{}
	_, err = jwt.NewParser(jwt.WithValidMethods([]string{"PS256", "RS256"}), jwt.WithoutClaimsValidation()).
		ParseWithClaims(assertion, claims, func(*jwt.Token) (any, error) { return pub, nil })
	if err != nil {
		return invalidClient(700027, fmt.Sprintf("Client assertion failed signature validation. [Reason - The provided signature value did not match the expected signature value., Thumbprint of key used by client: '%s']", tp))
	}
	return s.checkClaims(claims, a.ClientID, endpoint)
}

func (s *Server) checkClaims(c jwt.MapClaims, clientID, endpoint string) *entraErr {
	aud, _ := c["aud"].(string)
	if aud != endpoint {
		return invalidClient(50012, fmt.Sprintf("Client assertion audience claim does not match Realm issuer. Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials . Expected '%s', got '%v'.", endpoint, c["aud"]))
	}
	iss, _ := c["iss"].(string)
	sub, _ := c["sub"].(string)
	if sub != iss {
		return invalidClient(50048, "Subject mismatches Issuer claim in the client assertion.")
	}
	if iss != clientID {
		return invalidClient(700021, "Client assertion application identifier doesn't match 'client_id' parameter. Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .")
	}
	return s.checkTimesAndJTI(c)
}

func numericTime(v any) (time.Time, bool) {
	switch n := v.(type) {
	case float64:
		return time.Unix(int64(n), 0), true
	case json.Number:
		i, err := n.Int64()
		return time.Unix(i, 0), err == nil
	}
	return time.Time{}, false
}

func (s *Server) checkTimesAndJTI(c jwt.MapClaims) *entraErr {
	exp, ok := numericTime(c["exp"])
	if !ok {
		return invalidClient(50027, "Invalid JWT token. The token has no 'exp' claim.")
	}
	nbf, hasNBF := numericTime(c["nbf"])
	if !hasNBF {
		if iat, ok := numericTime(c["iat"]); ok {
			nbf, hasNBF = iat, true
		}
	}
	now := s.clock()
	if hasNBF && exp.Sub(nbf) > 10*time.Minute {
		// Entra does not enforce this today (docs/entra.md#client-assertion: "5-10 minutes after nbf
		// at most"); the fake does, so the relay keeps to the advice.
		return invalidClient(700024, fmt.Sprintf("Client assertion is not within its valid time range. Current time: %s, assertion valid from %s, expiry time of assertion %s: lifetime longer than 10 minutes.", now.UTC().Format(time.RFC3339), nbf.UTC().Format(time.RFC3339), exp.UTC().Format(time.RFC3339)))
	}
	if now.After(exp.Add(s.skew)) || (hasNBF && now.Before(nbf.Add(-s.skew))) {
		return invalidClient(700024, fmt.Sprintf("Client assertion is not within its valid time range. Current time: %s, assertion valid from %s, expiry time of assertion %s. Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .", now.UTC().Format(time.RFC3339), nbf.UTC().Format(time.RFC3339), exp.UTC().Format(time.RFC3339)))
	}
	jti, _ := c["jti"].(string)
	if jti == "" {
		return invalidClient(50027, "Invalid JWT token. The token has no 'jti' claim.")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, until := range s.jtis {
		if now.After(until) {
			delete(s.jtis, k)
		}
	}
	if _, seen := s.jtis[jti]; seen {
		return invalidClient(50027, "Invalid JWT token. The token identifier 'jti' was already used (replayed client assertion).")
	}
	s.jtis[jti] = exp.Add(s.skew)
	return nil
}
