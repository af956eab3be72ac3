package token

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Limits on what a token service may answer. Entra ID's answers are a few
// kilobytes (a token response with an app token of 1.5–3 KB, discovery
// documents of 2–6 KB); these leave two orders of magnitude of headroom
// and still keep a hostile or broken endpoint (a proxy, a captive portal,
// a compromised authority host) from making the relay hold a 30 MB token
// — once in the cache, again in every XOAUTH2 string built from it.
const (
	// MaxResponseBody is the most read of any response body.
	MaxResponseBody = 1 << 20
	// MaxAccessToken is the longest access_token accepted.
	MaxAccessToken = 64 << 10
	// MaxExpiresIn is the longest lifetime accepted: Entra ID issues
	// 60–90 min app tokens, managed identities up to 24 h.
	MaxExpiresIn = 24 * time.Hour
)

// LimitError is a token-service answer refused for breaking a limit. Its
// text names the limit and never quotes the answer (it may hold a token).
type LimitError struct{ What string }

func (e *LimitError) Error() string { return "the token service's answer was refused: " + e.What }

// LimitedClient returns a copy of c (nil: http.DefaultClient) whose
// transport applies the limits to every response, before any other code
// sees it: a body over MaxResponseBody is not read past the limit, and a
// successful JSON answer holding an access_token must carry a JWT of at
// most MaxAccessToken octets and, if it says, an expires_in of 1 s to
// MaxExpiresIn. A violation fails the request with a *LimitError, which
// the token source reports as a token failure (the mail waits), never as
// a message's. Use it for every client that fetches tokens (Entra ID,
// managed-identity endpoints).
func LimitedClient(c *http.Client) *http.Client {
	if c == nil {
		c = http.DefaultClient
	}
	if _, done := c.Transport.(*limitTransport); done {
		return c
	}
	next := c.Transport
	if next == nil {
		next = http.DefaultTransport
	}
	lc := *c
	lc.Transport = &limitTransport{next: next}
	return &lc
}

type limitTransport struct{ next http.RoundTripper }

func (t *limitTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseBody+1))
	if cerr := resp.Body.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	if len(body) > MaxResponseBody {
		return nil, &LimitError{What: fmt.Sprintf("its body is larger than %d bytes", MaxResponseBody)}
	}
	if resp.StatusCode/100 == 2 {
		if err := checkTokenAnswer(body); err != nil {
			return nil, err
		}
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	resp.ContentLength = int64(len(body))
	return resp, nil
}

// CloseIdleConnections lets http.Client.CloseIdleConnections reach the
// wrapped transport.
func (t *limitTransport) CloseIdleConnections() {
	if c, ok := t.next.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// checkTokenAnswer applies the token rules to a successful answer; one
// that is not a JSON object with an access_token string is left to the
// caller (MSAL reports its own error for it).
func checkTokenAnswer(body []byte) error {
	var a struct {
		AccessToken *string         `json:"access_token"`
		ExpiresIn   json.RawMessage `json:"expires_in"`
	}
	if json.Unmarshal(body, &a) != nil || a.AccessToken == nil {
		return nil
	}
	if n := len(*a.AccessToken); n > MaxAccessToken {
		return &LimitError{What: fmt.Sprintf("its access_token is %d bytes long, more than %d", n, MaxAccessToken)}
	}
	if !jwtShaped(*a.AccessToken) {
		return &LimitError{What: "its access_token is not a JWT (three base64url parts separated by dots)"}
	}
	if len(a.ExpiresIn) > 0 && string(a.ExpiresIn) != "null" {
		secs, ok := seconds(a.ExpiresIn)
		if !ok || secs < 1 || secs > int64(MaxExpiresIn/time.Second) {
			return &LimitError{What: fmt.Sprintf("its expires_in is not a whole number of seconds from 1 to %d", int64(MaxExpiresIn/time.Second))}
		}
	}
	return nil
}

// seconds reads expires_in as Entra ID writes it (a number) or as
// managed-identity endpoints do (a string of digits).
func seconds(raw json.RawMessage) (int64, bool) {
	s := string(raw)
	if u, err := strconv.Unquote(s); err == nil {
		s = u
	}
	if s == "" || len(s) > 12 || strings.Trim(s, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

// jwtShaped reports a compact JWS: three non-empty base64url parts (RFC
// 7515 §7.1, RFC 4648 §5 alphabet, no padding).
func jwtShaped(t string) bool {
	parts := strings.Split(t, ".")
	if len(parts) != 3 {
		return false
	}
	for _, p := range parts {
		if p == "" {
			return false
		}
		for i := 0; i < len(p); i++ {
			c := p[i]
			if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}
