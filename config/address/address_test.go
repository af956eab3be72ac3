package address

import (
	"strings"
	"testing"

	"github.com/o365relay/o365relay/relay/exchangetest"
)

func TestParseMail(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		line, want string
		size       int64
		body       string
		utf8       bool
	}{
		{"MAIL FROM:<app@contoso.com>", "app@contoso.com", 0, "", false},
		{"mail from:<App@Contoso.COM>", "App@Contoso.COM", 0, "", false},
		{"MAIL FROM:<>", "", 0, "", false},
		{"MAIL FROM:<> SIZE=10", "", 10, "", false},
		{"MAIL FROM: <a@b.example>  SIZE=100  BODY=8bitmime ", "a@b.example", 100, "8BITMIME", false},
		{"MAIL FROM:a@b.example", "a@b.example", 0, "", false},
		{"MAIL FROM:a@b.example SIZE=5", "a@b.example", 5, "", false},
		{`MAIL FROM:<"billing"@app.example>`, "billing@app.example", 0, "", false},
		{`MAIL FROM:<"first.last"@app.example>`, "first.last@app.example", 0, "", false},
		{`MAIL FROM:<"john smith"@app.example>`, `"john smith"@app.example`, 0, "", false},
		{`MAIL FROM:<"a..b"@app.example>`, `"a..b"@app.example`, 0, "", false},
		{"MAIL FROM:<@relay1.example,@relay2.example:user@c.example>", "user@c.example", 0, "", false},
		{"MAIL FROM:<a=b+c@x.example> AUTH=<>", "a=b+c@x.example", 0, "", false},
		{"MAIL FROM:<u@[192.0.2.1]>", "u@[192.0.2.1]", 0, "", false},
		{"MAIL FROM:<u@[IPv6:2001:db8::1]>", "u@[IPv6:2001:db8::1]", 0, "", false},
		{"MAIL FROM:<jörg@bücher.example> SMTPUTF8", "jörg@bücher.example", 0, "", true},
		{"MAIL FROM:<a@xn--bcher-kva.example> BODY=7BIT", "a@xn--bcher-kva.example", 0, "7BIT", false},
	} {
		m, err := ParseMail(tc.line)
		if err != nil {
			t.Errorf("%q: %v", tc.line, err)
			continue
		}
		if m.From.String() != tc.want || m.Size != tc.size || m.Body != tc.body || m.SMTPUTF8 != tc.utf8 {
			t.Errorf("%q: %+v (%q), want %q size %d body %q utf8 %v", tc.line, m, m.From.String(), tc.want, tc.size, tc.body, tc.utf8)
		}
	}
}

func TestParseRefusals(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		line string
		code int
		enh  [3]int
	}{
		// The class the issue names: text in quotes that would become
		// another address or a parameter if unquoted.
		{`MAIL FROM:<"billing@app.example> SIZE=1"@evil.example>`, 553, [3]int{5, 1, 7}},
		{`MAIL FROM:<"x>"@evil.example>`, 553, [3]int{5, 1, 7}},
		{`RCPT TO:<"a@b"@c.example>`, 553, [3]int{5, 1, 3}},
		{`RCPT TO:<"a\"b"@c.example>`, 553, [3]int{5, 1, 3}},
		{`RCPT TO:<"a\\b"@c.example>`, 553, [3]int{5, 1, 3}},
		{`RCPT TO:<""@c.example>`, 553, [3]int{5, 1, 3}},
		{`RCPT TO:<" a"@c.example>`, 553, [3]int{5, 1, 3}},
		{"RCPT TO:<\"a\tb\"@c.example>", 501, [3]int{5, 1, 3}},
		{`RCPT TO:<"unterminated@c.example>`, 501, [3]int{5, 1, 3}},
		{"RCPT TO:<a@@c.example>", 501, [3]int{5, 1, 3}},
		{"RCPT TO:<a@b@c.example>", 501, [3]int{5, 1, 3}},
		{"RCPT TO:<a b@c.example>", 501, [3]int{5, 1, 3}},
		{"RCPT TO:<a..b@c.example>", 501, [3]int{5, 1, 3}},
		{"RCPT TO:<.a@c.example>", 501, [3]int{5, 1, 3}},
		{"RCPT TO:<a.@c.example>", 501, [3]int{5, 1, 3}},
		{"RCPT TO:<a@c.example.>", 501, [3]int{5, 1, 3}},
		{"RCPT TO:<a@-c.example>", 501, [3]int{5, 1, 3}},
		{"RCPT TO:<a@c-.example>", 501, [3]int{5, 1, 3}},
		{"RCPT TO:<a@[300.1.1.1]>", 501, [3]int{5, 1, 3}},
		{"RCPT TO:<a@[tag:a@b]>", 553, [3]int{5, 1, 3}},
		{"RCPT TO:<a@c.example", 501, [3]int{5, 1, 3}},
		{"RCPT TO:<a@c.example>x", 501, [3]int{5, 1, 3}},
		{"RCPT TO:<>", 501, [3]int{5, 1, 3}},
		{"RCPT TO:<Postmaster>", 501, [3]int{5, 1, 3}},
		{"RCPT TO:<@:b@c.example>", 501, [3]int{5, 1, 3}},
		{"RCPT TO:<@a.example,b@c.example>", 501, [3]int{5, 1, 3}},
		{"RCPT TO:<a@c.example> NOTIFY=NEVER", 555, [3]int{5, 5, 4}},
		{"RCPT TO:<jörg@c.example>", 553, [3]int{5, 6, 7}},
		{"MAIL FROM:<jörg@c.example>", 553, [3]int{5, 6, 7}},
		{"MAIL FROM:<j＠rg@c.example> SMTPUTF8", 553, [3]int{5, 1, 7}},
		{"MAIL FROM:<a@c．example> SMTPUTF8", 553, [3]int{5, 1, 7}},
		{"MAIL FROM:<a\x00@c.example>", 501, [3]int{5, 1, 7}},
		{"MAIL FROM:<\xff@c.example> SMTPUTF8", 501, [3]int{5, 1, 7}},
		{"MAIL FROM:<a@c.example> SIZE=x", 501, [3]int{5, 5, 4}},
		{"MAIL FROM:<a@c.example> SIZE=+5", 501, [3]int{5, 5, 4}},
		{"MAIL FROM:<a@c.example> BODY=BINARYMIME", 501, [3]int{5, 5, 4}},
		{"MAIL FROM:<a@c.example> SMTPUTF8=yes", 501, [3]int{5, 5, 4}},
		{"MAIL FROM:<a@c.example> SIZE=1 SIZE=2", 501, [3]int{5, 5, 4}},
		{"MAIL FROM:<a@c.example> RET=FULL", 555, [3]int{5, 5, 4}},
		{"MAIL FROM:<a@c.example> X=a=b", 501, [3]int{5, 5, 4}},
		{"MAIL FROM:<a@c.example>\tSIZE=1", 501, [3]int{5, 1, 7}},
		{"MAIL FROM:<>x", 501, [3]int{5, 1, 7}},
		{"MAIL FROM:<" + strings.Repeat("a", 250) + "@b.cd>", 501, [3]int{5, 1, 7}},
		{"MAIL TO:<a@b>", 501, [3]int{5, 5, 2}},
	} {
		var err error
		if strings.HasPrefix(tc.line, "MAIL") {
			_, rerr := ParseMail(tc.line)
			if rerr != nil {
				err = rerr
				if rerr.Code != tc.code || rerr.Enhanced != tc.enh {
					t.Errorf("%q: %v, want %d %v", tc.line, rerr, tc.code, tc.enh)
				}
			}
		} else {
			_, rerr := ParseRcpt(tc.line, false)
			if rerr != nil {
				err = rerr
				if rerr.Code != tc.code || rerr.Enhanced != tc.enh {
					t.Errorf("%q: %v, want %d %v", tc.line, rerr, tc.code, tc.enh)
				}
			}
		}
		if err == nil {
			t.Errorf("%q accepted", tc.line)
		}
	}
}

// checkMailbox asserts what every accepted mailbox must satisfy: its wire
// form is a fixed point of Parse, parses under the fake Exchange's
// independent strict grammar as the same mailbox the client's own text
// names (when that text is strict RFC 5321 itself), holds nothing that
// could end the path or start a parameter, and splits at its last '@'.
func checkMailbox(t *testing.T, line string, m Mailbox, utf8 bool) {
	t.Helper()
	w := m.String()
	if w == "" {
		return
	}
	back, err := Parse(w, utf8)
	if err != nil || back != m {
		t.Fatalf("%q: canonical %q does not parse back (%v, %+v)", line, w, err, back)
	}
	if strings.ContainsAny(w, "<>\\\r\n\x00\t") || strings.LastIndexByte(w, '@') != len(m.Local()) {
		t.Fatalf("%q: canonical %q", line, w)
	}
	if i := strings.IndexByte(w, ' '); i >= 0 && (!strings.HasPrefix(w, `"`) || i > strings.LastIndexByte(w, '"')) {
		t.Fatalf("%q: canonical %q has a space outside quotes", line, w)
	}
	_, out, params, err := exchangetest.ParseCommand("RCPT TO:<"+w+">", utf8)
	if err != nil || len(params) != 0 {
		t.Fatalf("%q: the relay would write %q, which strict RFC 5321 refuses: %v", line, w, err)
	}
	if _, in, _, err := exchangetest.ParseCommand(line, utf8); err == nil && in.Mailbox() != out.Mailbox() {
		t.Fatalf("%q names %q, the relay would write %q (%q)", line, in.Mailbox(), w, out.Mailbox())
	}
}

// plainRFC reports whether a line the strict grammar accepts is one the
// relay must accept too: unquoted ASCII local part, no general address
// literal, only the parameters it supports, each once, with good values.
func plainRFC(line string, utf8 bool) bool {
	verb, p, params, err := exchangetest.ParseCommand(line, utf8)
	if err != nil || p.Quoted || !isASCII(line) || (strings.HasPrefix(p.Domain, "[") && strings.Contains(p.Domain, ":") &&
		!strings.HasPrefix(strings.ToUpper(p.Domain), "[IPV6:")) || len(p.Mailbox()) > MaxLength {
		return false
	}
	seen := map[string]bool{}
	for _, pr := range params {
		k := strings.ToUpper(pr.Keyword)
		if seen[k] || verb == "RCPT" {
			return false
		}
		seen[k] = true
		switch k {
		case "SIZE":
			if !pr.HasValue || strings.Trim(pr.Value, "0123456789") != "" || len(pr.Value) > 18 {
				return false
			}
		case "BODY":
			if v := strings.ToUpper(pr.Value); v != "7BIT" && v != "8BITMIME" {
				return false
			}
		case "SMTPUTF8":
			if pr.HasValue {
				return false
			}
		case "AUTH":
			if !pr.HasValue {
				return false
			}
		default:
			return false
		}
	}
	return true
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"MAIL FROM:<app@contoso.com>", "RCPT TO:<a@b.example>", `MAIL FROM:<"a b"@c>`, `RCPT TO:<"x>"@y>`,
		"MAIL FROM:<> SIZE=5", "MAIL FROM:<@a,@b:c@d> SMTPUTF8", "RCPT TO:<jörg@bücher.example>", "MAIL FROM:<u@[IPv6:::1]>",
		`MAIL FROM:<"billing@app.example> SIZE=1"@evil.example>`, `RCPT TO:<"a\"b"@c>`, "MAIL FROM:a@b AUTH=x", "RCPT TO:<a@[1.2.3.4]>"} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, line string, utf8 bool) {
		var m Mailbox
		var accepted bool
		if strings.HasPrefix(strings.ToUpper(line), "MAIL") {
			mail, err := ParseMail(line)
			if err == nil {
				m, accepted, utf8 = mail.From, true, mail.SMTPUTF8
			} else if err.Code != 500 && err.Code != 501 && err.Code != 553 && err.Code != 555 {
				t.Fatalf("%q: %v", line, err)
			}
		} else {
			to, err := ParseRcpt(line, utf8)
			if err == nil {
				m, accepted = to, true
			} else if err.Code != 500 && err.Code != 501 && err.Code != 553 && err.Code != 555 {
				t.Fatalf("%q: %v", line, err)
			}
		}
		if accepted {
			checkMailbox(t, line, m, utf8)
		} else if plainRFC(line, utf8) {
			t.Fatalf("%q: plain RFC 5321 refused", line)
		}
	})
}

func TestFold(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"Billing@App.Example": "billing@app.example",
		"plain@x.example":     "plain@x.example",
		"\u212Aate@x.example": "\u212Aate@x.example", // KELVIN SIGN stays: it is not "k"
		"JÖRG@Bücher.example": "jÖrg@bücher.example",
	} {
		if got := Fold(in); got != want {
			t.Errorf("Fold(%q) = %q, want %q", in, got, want)
		}
	}
}
