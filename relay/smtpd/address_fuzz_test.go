package smtpd

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzCheckAddress checks the MAIL/RCPT path rules against their
// definition: an accepted address is valid UTF-8 of at most 254 octets with
// no control character, has a local part and a domain around its last '@',
// and is ASCII unless the client asked for SMTPUTF8 (RFC 6531 §3.4); the
// null reverse-path is accepted for MAIL only. A refusal is a 501 (syntax)
// or 553 5.6.7 (non-ASCII without SMTPUTF8), permanent, with a reason.
// SMTPUTF8 only ever widens what is accepted.
func FuzzCheckAddress(f *testing.F) {
	for _, s := range []string{"app@contoso.com", "", "noatsign", "@x", "x@", "a@b@c", "jos\u00e9@contoso.com",
		"\"quoted local\"@x.org", "a\x00@b", "a\x7f@b", "\xff@b", strings.Repeat("a", 250) + "@b.cd", "a@[192.0.2.1]"} {
		f.Add(s, false, true)
		f.Add(s, true, false)
	}
	f.Fuzz(func(t *testing.T, addr string, utf8OK, isMail bool) {
		err := checkAddress(addr, utf8OK, isMail)
		if err == nil {
			if addr == "" {
				if !isMail {
					t.Fatal("empty RCPT address accepted")
				}
				return
			}
			if !utf8.ValidString(addr) || len(addr) > 254 {
				t.Fatalf("accepted %q (invalid UTF-8 or too long)", addr)
			}
			for _, r := range addr {
				if r < 0x20 || r == 0x7f {
					t.Fatalf("accepted a control character in %q", addr)
				}
				if r >= 0x80 && !utf8OK {
					t.Fatalf("accepted non-ASCII %q without SMTPUTF8", addr)
				}
			}
			at := strings.LastIndexByte(addr, '@')
			if at <= 0 || at == len(addr)-1 {
				t.Fatalf("accepted %q without local-part@domain", addr)
			}
			return
		}
		switch {
		case err.Code == 501 && err.Enhanced[0] == 5:
		case err.Code == 553 && err.Enhanced == [3]int{5, 6, 7}:
			if utf8OK {
				t.Fatalf("553 5.6.7 for %q although SMTPUTF8 was given", addr)
			}
		default:
			t.Fatalf("refusal %d %v for %q", err.Code, err.Enhanced, addr)
		}
		if len(err.Text) < 10 {
			t.Fatalf("refusal of %q gives no reason: %q", addr, err.Text)
		}
		if !utf8OK && checkAddress(addr, true, isMail) == nil {
			// Refused without SMTPUTF8, accepted with it: the only
			// difference may be non-ASCII.
			if err.Code != 553 {
				t.Fatalf("%q: %d without SMTPUTF8, accepted with it", addr, err.Code)
			}
		}
	})
}
