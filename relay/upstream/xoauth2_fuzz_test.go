package upstream

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/o365relay/o365relay/config/secret"
)

// FuzzXOAuth2Wire complements FuzzXOAuth2Payload with what the payload looks
// like on its way out and in the logs: for every user and token,
//   - a user with \x01, CR or LF (or empty) is refused, so the user= field
//     can never hold a field separator or end the AUTH line early;
//   - an accepted exchange is one base64 line (what go-smtp sends after 334)
//     that decodes to user= exactly the user, with no \x01 inside it;
//   - the payload, formatted every way a log line or error could format it
//     (fmt verbs, JSON, zap fields), never shows the token, and neither does
//     Start's error for a refused token.
func FuzzXOAuth2Wire(f *testing.F) {
	f.Add("relay@contoso.test", "eyJ0eXAiOiJKV1QifQ.eyJhdWQiOiJodHRwcyJ9.c2lnbmF0dXJl")
	f.Add("user=evil\x01auth=Bearer x", "tok")
	f.Add("a@b\r\nQUIT", "tok")
	f.Add("a@b", "tok\r\nRSET")
	f.Add("a@b", "")
	f.Add("ünïcødé@bücher.example", "t0k3n-with-dashes_and.dots")
	f.Add("[REDACTED]", "REDACTED")
	f.Fuzz(func(t *testing.T, user, tok string) {
		if CheckUser(user) == nil && (user == "" || strings.ContainsAny(user, "\x01\r\n")) {
			t.Fatalf("CheckUser accepted %q", user)
		}
		c := NewXOAuth2(user, secret.Secret(tok))
		_, _, err := c.Start()
		if err != nil {
			if len(tok) >= 4 && strings.Contains(err.Error(), tok) {
				// The text may contain tok by coincidence (" tok" is
				// in "access token"): the same refusal for another
				// token must not contain it.
				_, _, ref := NewXOAuth2(user, secret.Secret("")).Start()
				if ref == nil || !strings.Contains(ref.Error(), tok) {
					t.Fatalf("Start's error shows the token: %v", err)
				}
			}
			return
		}
		if strings.ContainsAny(user, "\x01\r\n") {
			t.Fatalf("Start accepted user %q", user)
		}
		raw, err := c.Next([]byte{})
		if err != nil {
			t.Fatal(err)
		}
		wire := base64.StdEncoding.EncodeToString(raw)
		if strings.ContainsAny(wire, "\r\n") {
			t.Fatal("wire form spans lines")
		}
		dec, err := base64.StdEncoding.DecodeString(wire)
		if err != nil {
			t.Fatal(err)
		}
		userField, _, ok := strings.Cut(string(dec), "\x01")
		if !ok || userField != "user="+user {
			t.Fatalf("user field %q, want user=%q", userField, user)
		}

		p := XOAuth2Payload(user, secret.Secret(tok))
		rendered := render(t, p)
		if len(tok) < 4 || strings.Contains(render(t, secret.Secret("x")), tok) {
			return // too short to tell apart from the placeholder text
		}
		if strings.Contains(rendered, tok) {
			t.Fatalf("formatting the payload shows the token: %q", rendered)
		}
	})
}

// render formats v every way a log line or error message might.
func render(t *testing.T, v secret.Secret) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "%v|%s|%q|%#v|%+v|%x|", v, v, v, v, v, v)
	fmt.Fprint(&b, v, []any{v}, struct{ P secret.Secret }{v})
	fmt.Fprintf(&b, "%v", fmt.Errorf("auth failed: %v", v))
	j, err := json.Marshal(map[string]any{"p": v, "s": struct{ P secret.Secret }{v}})
	if err != nil {
		t.Fatal(err)
	}
	b.Write(j)
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	buf, err := enc.EncodeEntry(zapcore.Entry{Message: "x"}, []zapcore.Field{
		zap.Any("any", v), zap.Stringer("stringer", v), zap.Reflect("reflect", struct{ P secret.Secret }{v}),
	})
	if err != nil {
		t.Fatal(err)
	}
	b.Write(buf.Bytes())
	return b.String()
}
