package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/o365relay/o365relay/config/secret"
	"github.com/o365relay/o365relay/relay/relaytest"
	"github.com/o365relay/o365relay/token"
)

// `send` delivers one message to the fake Exchange on one connection and
// reports every step; a refusal is Exchange's reply with its hint, exit 1.
func TestSend(t *testing.T) {
	t.Parallel()
	cloud := newCloud(t)
	env := doctorEnv(t, cloud)
	body := writeFile(t, t.TempDir(), "body.txt", []byte("first line\nsecond line, Unix endings\n.leading dot\n"))
	out, code := runToolEnv(t, env, binPath, "send", "--to", "someone@fabrikam.example", "--subject", "doctor test", "--body-file", body)
	if code != 0 {
		t.Fatalf("send exit %d:\n%s", code, out)
	}
	for _, p := range []string{"✔ route: sender <" + relaytest.Mailbox + "> → mailbox " + relaytest.Mailbox + " (rewrite none)", "✔ connect: ", "✔ tls: STARTTLS, TLS 1.3", "✔ token: ", "✔ auth: AUTH XOAUTH2 as " + relaytest.Mailbox, "✔ send: MAIL FROM:<" + relaytest.Mailbox + "> RCPT TO:<someone@fabrikam.example> DATA: 250 ", "✔ quit: "} {
		line(t, out, p)
	}
	msgs := cloud.Exchange.Messages()
	if len(msgs) != 1 {
		t.Fatalf("Exchange has %d messages", len(msgs))
	}
	m := msgs[0]
	if m.AuthUser != relaytest.Mailbox || m.MailFrom != relaytest.Mailbox || len(m.RcptTo) != 1 || m.RcptTo[0] != "someone@fabrikam.example" || !m.TLS {
		t.Errorf("message %+v", m)
	}
	for _, w := range []string{"Subject: doctor test\r\n", "\r\n\r\nfirst line\r\nsecond line, Unix endings\r\n.leading dot\r\n"} {
		if !bytes.Contains(m.Data, []byte(w)) {
			t.Errorf("message lacks %q:\n%s", w, preview(m.Data))
		}
	}
	if strings.Contains(out, "eyJ") {
		t.Errorf("output contains a JWT:\n%s", out)
	}
	checkUpstreamClean(t, cloud)

	// A sender the mailbox may not use: Exchange's 550 5.7.60 at MAIL, the
	// hint, exit 1.
	out, code = runToolEnv(t, env, binPath, "send", "--from", "ceo@contoso.example", "--to", "someone@fabrikam.example")
	if code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", code, out)
	}
	line(t, out, "✔ auth: ")
	if l := line(t, out, "✘ send: "); !strings.Contains(l, "550 5.7.60") {
		t.Errorf("send line: %s", l)
	}
	if !strings.Contains(out, "Send-As") {
		t.Errorf("no hint:\n%s", out)
	}
	if n := len(cloud.Exchange.Messages()); n != 1 {
		t.Errorf("Exchange has %d messages after the refusal", n)
	}
	if out, code := runToolEnv(t, env, binPath, "send"); code != 2 || !strings.Contains(out, "--to is required") {
		t.Errorf("send without --to: exit %d\n%s", code, out)
	}
}

// `token` prints the claims and expiry, never the token unless asked.
func TestTokenCommand(t *testing.T) {
	t.Parallel()
	cloud := newCloud(t)
	env := doctorEnv(t, cloud)
	out, code := runToolEnv(t, env, binPath, "token", "--print-token")
	if code != 0 {
		t.Fatalf("token --print-token exit %d:\n%s", code, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	raw := lines[len(lines)-1]
	cl, err := token.ParseClaims(token.Token{Value: secret.Secret(raw)})
	if err != nil || cl.ObjectID != relaytest.ObjectID || !cl.HasRole("SMTP.SendAsApp") {
		t.Fatalf("last line is not the token (%v, %+v):\n%s", err, cl, out)
	}

	out, code = runToolEnv(t, env, binPath, "token")
	if code != 0 {
		t.Fatalf("token exit %d:\n%s", code, out)
	}
	for _, w := range []string{"audience (aud)  https://outlook.office365.com", "tenant (tid)    " + cloud.Entra.Tenant(), "app (appid)     " + relaytest.ClientID,
		"object (oid)    " + relaytest.ObjectID, "roles           SMTP.SendAsApp", "expires ", "not shown"} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
	// Any JWT (base64url JSON starts with "eyJ"), and the header and
	// signature of the one just printed (its payload differs per token).
	parts := strings.Split(raw, ".")
	for _, secretPart := range []string{"eyJ", parts[0], parts[2][:20]} {
		if strings.Contains(out, secretPart) {
			t.Errorf("token output contains %q:\n%s", secretPart, out)
		}
	}

	out, code = runToolEnv(t, env, binPath, "token", "--json")
	var got map[string]any
	if err := json.Unmarshal([]byte(out), &got); err != nil || code != 0 {
		t.Fatalf("token --json: exit %d, %v\n%s", code, err, out)
	}
	if got["object_id"] != relaytest.ObjectID || got["access_token"] != nil || strings.Contains(out, "eyJ") {
		t.Errorf("--json: %s", out)
	}

	// A failed request: the AADSTS code, the hint and the fix, exit 1.
	out, code = runToolEnv(t, withEnv(env, "AZURE_CLIENT_ID=11111111-2222-3333-4444-555555555555"), binPath, "token")
	if code != 1 || !strings.Contains(out, "AADSTS700016") || !strings.Contains(out, "AZURE_CLIENT_ID") {
		t.Errorf("unknown client: exit %d\n%s", code, out)
	}
}
