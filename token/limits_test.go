package token

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/o365relay/o365relay/config/waitfor"
)

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// answer returns a client whose every request gets status and body.
func answer(status int, body []byte) *http.Client {
	return LimitedClient(&http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: status, Body: io.NopCloser(bytes.NewReader(body)), Header: http.Header{}, Request: r}, nil
	})})
}

const jwtLikeToken = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJ4In0.c2lnbmF0dXJl"

func tokenJSON(tok string, expiresIn any) []byte {
	m := map[string]any{"token_type": "Bearer", "access_token": tok}
	if expiresIn != nil {
		m["expires_in"] = expiresIn
	}
	b, _ := json.Marshal(m)
	return b
}

func TestLimitedClient(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		status int
		body   []byte
		ok     bool
	}{
		{"good", 200, tokenJSON(jwtLikeToken, 3599), true},
		{"expires_in as a string (v1, managed identity)", 200, tokenJSON(jwtLikeToken, "86400"), true},
		{"no expires_in", 200, tokenJSON(jwtLikeToken, nil), true},
		{"discovery document", 200, []byte(`{"token_endpoint":"https://login.example/t/oauth2/v2.0/token"}`), true},
		{"error answer", 400, []byte(`{"error":"invalid_client","error_codes":[700016]}`), true},
		{"not JSON", 200, []byte("<html>captive portal</html>"), true},
		{"body just at the limit", 200, append([]byte(`"`), bytes.Repeat([]byte("x"), MaxResponseBody-2)...), true},
		{"body over the limit", 200, bytes.Repeat([]byte(" "), MaxResponseBody+1), false},
		{"error body over the limit", 500, bytes.Repeat([]byte(" "), 30<<20), false},
		{"token at the limit", 200, tokenJSON("a."+strings.Repeat("b", MaxAccessToken-4)+".c", 3599), true},
		{"token over the limit", 200, tokenJSON("a."+strings.Repeat("b", MaxAccessToken-3)+".c", 3599), false},
		{"30 MB token", 200, tokenJSON("a."+strings.Repeat("b", 30<<20)+".c", 3599), false},
		{"not a JWT", 200, tokenJSON("opaque-token-value", 3599), false},
		{"two parts", 200, tokenJSON("eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJ4In0", 3599), false},
		{"JWE (five parts)", 200, tokenJSON("a.b.c.d.e", 3599), false},
		{"empty signature", 200, tokenJSON("eyJhbGciOiJub25lIn0.eyJhdWQiOiJ4In0.", 3599), false},
		{"padding", 200, tokenJSON("a.b=.c", 3599), false},
		{"empty token", 200, tokenJSON("", 3599), false},
		{"expires_in 0", 200, tokenJSON(jwtLikeToken, 0), false},
		{"expires_in negative", 200, tokenJSON(jwtLikeToken, -5), false},
		{"expires_in 24 h", 200, tokenJSON(jwtLikeToken, 86400), true},
		{"expires_in over 24 h", 200, tokenJSON(jwtLikeToken, 86401), false},
		{"expires_in ten years", 200, tokenJSON(jwtLikeToken, "315360000"), false},
		{"expires_in fractional", 200, tokenJSON(jwtLikeToken, 3599.5), false},
		{"expires_in not a number", 200, tokenJSON(jwtLikeToken, "soon"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			resp, err := answer(tc.status, tc.body).Get("https://login.example/tenant/oauth2/v2.0/token")
			if !tc.ok {
				var le *LimitError
				if !errors.As(err, &le) {
					t.Fatalf("got %v, want a *LimitError", err)
				}
				if strings.Contains(err.Error(), "bbbb") || strings.Contains(err.Error(), "opaque") || strings.Contains(err.Error(), "eyJ") {
					t.Fatalf("the error quotes the answer: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(resp.Body)
			if err != nil || !bytes.Equal(got, tc.body) || resp.ContentLength != int64(len(tc.body)) {
				t.Fatalf("body changed (%d of %d bytes): %v", len(got), len(tc.body), err)
			}
		})
	}
}

// A hostile answer from the token endpoint is a token failure — an
// *EntraError, which the Exchange client turns into 451 4.7.0 at the token
// stage, so the mail waits — with a log line that names the
// limit and quotes nothing of the answer; the real answer works again
// after the backoff.
func TestHostileTokenAnswersAreTokenFailures(t *testing.T) {
	t.Parallel()
	huge := "eyJ" + strings.Repeat("A", 30<<20) + ".eyJ.sig"
	for _, tc := range []struct {
		name   string
		answer func(map[string]any) []byte
		want   string
	}{
		{"30 MB token", func(m map[string]any) []byte { m["access_token"] = huge; return mustJSON(m) }, "larger than"},
		{"not a JWT", func(m map[string]any) []byte { m["access_token"] = "opaque-secret-token"; return mustJSON(m) }, "not a JWT"},
		{"expires_in ten years", func(m map[string]any) []byte { m["expires_in"] = 315360000; return mustJSON(m) }, "expires_in"},
		{"expires_in 0", func(m map[string]any) []byte { m["expires_in"] = 0; return mustJSON(m) }, "expires_in"},
		{"2 MiB answer", func(m map[string]any) []byte { m["padding"] = strings.Repeat(" ", 2<<20); return mustJSON(m) }, "body is larger"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			core, logs := observer.New(zap.DebugLevel)
			s := f.source(t, f.certCred(t, 0), func(o *Options) { o.Logger = zap.New(core) })
			s.backoffMin, s.backoffMax = 10*time.Millisecond, 20*time.Millisecond
			var mu sync.Mutex
			var sent []string
			f.srv.SetTokenAnswer(func(m map[string]any) []byte {
				mu.Lock()
				sent = append(sent, m["access_token"].(string))
				mu.Unlock()
				return tc.answer(m)
			})
			_, err := s.Token(ctxT(t))
			ee := entraErr(t, err)
			if !strings.Contains(ee.Error(), tc.want) || !ee.Temporary() {
				t.Fatalf("got %v", ee)
			}
			mu.Lock()
			defer mu.Unlock()
			for _, e := range logs.All() {
				line := fmt.Sprint(e.Message, e.ContextMap())
				for _, tok := range append(sent, "opaque-secret-token", "AAAAAAAA") {
					if strings.Contains(line, tok) {
						t.Fatalf("log line quotes the answer: %.200s", line)
					}
				}
			}
			// One failed request, logged with the limit it broke.
			failed := logs.FilterField(zap.Bool("temporary", true)).All()
			if len(failed) != 1 || !strings.Contains(fmt.Sprint(failed[0].ContextMap()["error"]), tc.want) {
				t.Errorf("log lines for the refused answer: %v, want one naming %q", failed, tc.want)
			}
			f.srv.SetTokenAnswer(nil)
			// Polled: Token answers with the last error, without a
			// request, until the 10–20 ms backoff has run out.
			var tok Token
			waitfor.Check(t, "a token once the answer is fixed", func() (err error) {
				tok, err = s.Token(ctxT(t))
				return err
			})
			f.verifyAccessToken(t, tok)
		})
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
