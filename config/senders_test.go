package config

import (
	"errors"
	"strings"
	"testing"
)

const rulesFile = `mailbox: default@contoso.com
senders:
  - sender: Billing@App.example
    mailbox: billing@contoso.com
    rewrite: envelope+from
  - sender: "*@app.example"
    mailbox: apps@contoso.com
    rewrite: envelope
  - sender: "*"
mailboxes:
  billing@contoso.com: {connections: 1, rate: 0, daily_recipients: 500}
`

func TestSenderRules(t *testing.T) {
	t.Parallel()
	c, err := Load(Input{File: writeFile(t, rulesFile), Env: []string{"O365RELAY_MAILBOX_RATE=20"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		sender, mailbox string
		rw              Rewrite
	}{
		{"billing@app.example", "billing@contoso.com", RewriteEnvelopeFrom},
		{"BILLING@app.EXAMPLE", "billing@contoso.com", RewriteEnvelopeFrom},
		{"cron@app.example", "apps@contoso.com", RewriteEnvelope},
		{"someone@elsewhere.example", "default@contoso.com", RewriteNone},
		{"", "default@contoso.com", RewriteNone},
		// Unicode case folding would make this billing@app.example;
		// Exchange is sent it as it is, so it is not.
		{"b\u0130lling@app.example", "apps@contoso.com", RewriteEnvelope},
	} {
		mb, ok := c.Route(tc.sender)
		if !ok || mb != tc.mailbox || c.RewriteFor(tc.sender) != tc.rw {
			t.Errorf("%q → %q %v %v, want %q %v", tc.sender, mb, ok, c.RewriteFor(tc.sender), tc.mailbox, tc.rw)
		}
	}
	if got := c.Mailboxes(); strings.Join(got, ",") != "default@contoso.com,billing@contoso.com,apps@contoso.com" {
		t.Errorf("mailboxes %v", got)
	}
	if l := c.Limits("Billing@contoso.com"); l != (MailboxLimits{Connections: 1, Rate: 0, DailyRecipients: 500}) {
		t.Errorf("override %+v", l)
	}
	if l := c.Limits("apps@contoso.com"); l != (MailboxLimits{Connections: 3, Rate: 20, DailyRecipients: 10000}) {
		t.Errorf("global %+v", l)
	}
	if n := c.TotalConnections(); n != 7 {
		t.Errorf("total connections %d", n)
	}
}

// Without a catch-all, an unmatched sender has no route (the listener
// answers 550 5.7.1 naming the key); without rules everything goes to the
// mailbox setting.
func TestSenderRefused(t *testing.T) {
	t.Parallel()
	c, err := Load(Input{File: writeFile(t, "senders:\n  - sender: a@b.example\n    mailbox: m@contoso.com\n")})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CheckDaemon(); err != nil && strings.Contains(err.Error(), "mailbox") {
		t.Errorf("mailbox required although every rule names one: %v", err)
	}
	if mb, ok := c.Route("x@b.example"); ok || mb != "" {
		t.Fatalf("unmatched sender routed to %q", mb)
	}
	if _, ok := c.Route(""); ok {
		t.Error("null sender accepted without a catch-all")
	}
	c, err = Load(Input{Env: []string{"O365RELAY_MAILBOX=m@contoso.com"}})
	if err != nil {
		t.Fatal(err)
	}
	if mb, ok := c.Route("anyone@anywhere.example"); !ok || mb != "m@contoso.com" {
		t.Errorf("no rules: %q %v", mb, ok)
	}
}

func TestSenderRuleErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ file, want string }{
		{"senders: a@b\n", "relay.yaml:1 senders: expected a list"},
		{"senders:\n  - sender: a@b.example\n", "names no mailbox and the mailbox setting"},
		{"senders:\n  - sender: a*@b.example\n    mailbox: m@c.example\n", `"*@domain"`},
		{"senders:\n  - sender: a@*.example\n    mailbox: m@c.example\n", `"*@domain"`},
		{"senders:\n  - mailbox: m@c.example\n", "rule without sender"},
		{"senders:\n  - sender: a@b.example\n    mailbox: m@c.example\n    rewrite: from\n", "not none, envelope or envelope+from"},
		{"senders:\n  - sender: a@b.example\n    mailbox: m@c.example\n  - sender: A@b.example\n    mailbox: n@c.example\n", "already on line 2"},
		{"senders:\n  - sender: a@b.example\n    mailbox: m\n", "mailbox"},
		{"senders:\n  - sender: a@b.example\n    mailbox: m@c.example\n    colour: red\n", `unknown field "colour"`},
		{"mailbox: m@c.example\nmailboxes:\n  m@c.example: {connections: 0}\n", "connections must be at least 1"},
		{"mailbox: m@c.example\nmailboxes:\n  m@c.example: {rate: fast}\n", "not a whole number"},
		{"mailbox: m@c.example\nmailboxes:\n  m@c.example: {burst: 3}\n", `unknown field "burst"`},
		{"mailbox: m@c.example\nmailboxes: [1]\n", "expected a mapping"},
		{"senders: []\nsenders: []\n", "set twice"},
	} {
		_, err := Load(Input{File: writeFile(t, tc.file)})
		var ce *Error
		if err == nil || !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.file, err, tc.want)
		}
	}
	c, err := Load(Input{File: writeFile(t, "mailbox: m@c.example\nmailboxes:\n  other@c.example: {rate: 1}\n")})
	if err != nil || len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], "no effect") {
		t.Errorf("unused override: %v %v", err, c.Warnings)
	}
}

func TestParseRewrite(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]Rewrite{"": RewriteNone, "none": RewriteNone, "Envelope": RewriteEnvelope, "envelope+from": RewriteEnvelopeFrom} {
		if got, err := parseRewrite(in); err != nil || got != want || (in != "" && !strings.EqualFold(got.String(), in)) {
			t.Errorf("%q: %v %v", in, got, err)
		}
	}
	if _, err := parseRewrite("from"); err == nil {
		t.Error("accepted from")
	}
}
