package upstream

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/o365relay/o365relay/config/secret"
)

func TestXOAuth2Payload(t *testing.T) {
	t.Parallel()
	got := XOAuth2Payload("relay@contoso.test", "eyJ0.eyJ1.sig")
	want := "user=relay@contoso.test\x01auth=Bearer eyJ0.eyJ1.sig\x01\x01"
	if got.Reveal() != want {
		t.Errorf("payload %q, want %q", got.Reveal(), want)
	}
	if got.String() == want {
		t.Error("payload is not redacted when printed")
	}
}

func TestXOAuth2TwoStep(t *testing.T) {
	t.Parallel()
	c := NewXOAuth2("relay@contoso.test", "tok")
	mech, ir, err := c.Start()
	if err != nil || mech != "XOAUTH2" || ir != nil {
		t.Fatalf("Start = %q, %q, %v; want XOAUTH2 without initial response", mech, ir, err)
	}
	resp, err := c.Next([]byte{})
	if err != nil || string(resp) != "user=relay@contoso.test\x01auth=Bearer tok\x01\x01" {
		t.Fatalf("first Next = %q, %v", resp, err)
	}
	// Google-style error challenge: answer with an empty, non-nil response
	// so go-smtp sends an empty line and the server can say 535.
	resp, err = c.Next([]byte(`{"status":"401","schemes":"bearer"}`))
	if err != nil || resp == nil || len(resp) != 0 {
		t.Fatalf("Next after error challenge = %#v, %v; want []byte{}", resp, err)
	}
}

func TestXOAuth2RejectsBadInput(t *testing.T) {
	t.Parallel()
	for _, user := range []string{"", "a\x01b@x", "a@x\r\nMAIL FROM:<x>", "a@x\n"} {
		if _, _, err := NewXOAuth2(user, "tok").Start(); !errors.Is(err, ErrBadUser) {
			t.Errorf("user %q: err = %v, want ErrBadUser", user, err)
		}
	}
	for _, tok := range []secret.Secret{"", "a\x01b", "a\r\nb", "a b"} {
		_, _, err := NewXOAuth2("relay@contoso.test", tok).Start()
		if err == nil {
			t.Errorf("token %q accepted", tok.Reveal())
			continue
		}
		if tok != "" && strings.Contains(err.Error(), tok.Reveal()) {
			t.Errorf("error quotes the token: %v", err)
		}
	}
}

// FuzzXOAuth2Payload checks that for every user and token Start accepts,
// the payload has exactly the XOAUTH2 shape and gives back both values.
func FuzzXOAuth2Payload(f *testing.F) {
	f.Add("relay@contoso.test", "eyJhbGciOiJSUzI1NiJ9.e30.c2ln")
	f.Add("ü@bücher.example", "x")
	f.Add("a\x01b", "t")
	f.Fuzz(func(t *testing.T, user, tok string) {
		c := NewXOAuth2(user, secret.Secret(tok))
		mech, ir, err := c.Start()
		if err != nil {
			if CheckUser(user) == nil && tok != "" && !strings.ContainsAny(tok, "\x01\r\n ") {
				t.Fatalf("valid input rejected: %v", err)
			}
			return
		}
		if mech != Mechanism || ir != nil {
			t.Fatalf("Start = %q, %q", mech, ir)
		}
		p, err := c.Next(nil)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.ContainsAny(p, "\r\n") {
			t.Fatalf("payload contains CR/LF")
		}
		f := strings.Split(string(p), "\x01")
		if len(f) != 4 || f[0] != "user="+user || f[1] != "auth=Bearer "+tok || f[2] != "" || f[3] != "" {
			t.Fatalf("payload fields %q", f)
		}
		if r, _ := c.Next([]byte("{}")); r == nil || len(r) != 0 {
			t.Fatalf("second Next = %#v", r)
		}
	})
}
