package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/o365relay/o365relay/relay/relaytest"
)

// Sender rules (README.md, Sender rules) end to end: from the config file,
// through the built binary, with real clients.

const secondMailbox = "billing@contoso.example"

// startWithRules runs a relay whose config file holds rules, between a cloud
// with a second mailbox and the test's clients.
func startWithRules(t *testing.T, rules string, extra ...string) *e2e {
	t.Helper()
	cloud, err := relaytest.New(relaytest.Options{Dir: t.TempDir(), Mailboxes: []string{secondMailbox}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cloud.Close(); err != nil {
			t.Error(err)
		}
	})
	cfg := filepath.Join(t.TempDir(), "relay.yaml")
	if err := os.WriteFile(cfg, []byte(rules), 0o600); err != nil {
		t.Fatal(err)
	}
	spool := t.TempDir()
	env, smtpAddr, adminAddr := relayEnv(t, cloud, spool, extra...)
	p := startRelay(t, env, smtpAddr, "serve", "--config", cfg)
	return &e2e{t: t, cloud: cloud, relay: p, smtp: smtpAddr, admin: adminAddr, spool: spool, env: env}
}

// pySend sends msgs over one SMTP session with Python's smtplib; each line
// of output is "ok" or "refused CODE TEXT" for one message.
func pySend(t *testing.T, addr string, from []string, to string, msgs [][]byte) []string {
	t.Helper()
	py := requireTool(t, "python3")
	host, port := hostPort(t, addr)
	dir := t.TempDir()
	for i, m := range msgs {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprint(i)), m, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	script := `import smtplib,sys,os
host,port,d,to=sys.argv[1],int(sys.argv[2]),sys.argv[3],sys.argv[4]
froms=sys.argv[5:]
s=smtplib.SMTP(host,port,local_hostname="python.test",timeout=60)
for i,f in enumerate(froms):
    try:
        s.sendmail(f,[to],open(os.path.join(d,str(i)),"rb").read())
        print("ok")
    except smtplib.SMTPSenderRefused as e:
        print("refused",e.smtp_code,e.smtp_error.decode())
        s.rset()
s.quit()`
	out, code := runTool(t, nil, py, append([]string{"-c", script, host, port, dir, to}, from...)...)
	if code != 0 {
		t.Fatalf("python exited %d:\n%s", code, out)
	}
	return strings.Split(strings.TrimSpace(out), "\n")
}

// belowHeader is what follows the header section.
func belowHeader(t *testing.T, data []byte) []byte {
	t.Helper()
	i := bytes.Index(data, []byte("\r\n\r\n"))
	if i < 0 {
		t.Fatalf("no end of header in %s", preview(data))
	}
	return data[i+4:]
}

// Two senders mapped to two mailboxes authenticate as the right user=
// each; their From: is rewritten to the mailbox, keeping the display name,
// with the original in Reply-To and X-Original-From; the body below the
// header arrives byte for byte.
func TestE2ESendersToMailboxes(t *testing.T) {
	t.Parallel()
	e := startWithRules(t, fmt.Sprintf(`senders:
  - sender: alerts@app.example
    mailbox: %s
    rewrite: envelope+from
  - sender: "*@billing.example"
    mailbox: %s
    rewrite: envelope+from
`, relaytest.Mailbox, secondMailbox))
	to := "someone@fabrikam.example"
	alerts := bytes.Replace(testBody("alerts@app.example", to, "e2e alerts"), []byte("From: <alerts@app.example>"), []byte(`From: "App Alerts" <alerts@app.example>`), 1)
	invoice := testBody("invoices@billing.example", to, "e2e invoice")
	res := pySend(t, e.smtp, []string{"alerts@app.example", "invoices@billing.example"}, to, [][]byte{alerts, invoice})
	if strings.Join(res, ",") != "ok,ok" {
		t.Fatalf("python: %q\n%s", res, e.relay.out.String())
	}
	msgs := e.waitMessages(2)
	want := map[string]struct {
		mailbox, from, orig string
		sent                []byte
	}{
		"e2e alerts":  {relaytest.Mailbox, `From: "App Alerts" <` + relaytest.Mailbox + ">", `"App Alerts" <alerts@app.example>`, alerts},
		"e2e invoice": {secondMailbox, "From: <" + secondMailbox + ">", "<invoices@billing.example>", invoice},
	}
	for _, m := range msgs {
		subj := ""
		for k := range want {
			if bytes.Contains(m.Data, []byte("Subject: "+k+"\r\n")) {
				subj = k
			}
		}
		w, ok := want[subj]
		if !ok {
			t.Fatalf("unexpected message %s", preview(m.Data))
		}
		if m.AuthUser != w.mailbox || m.MailFrom != w.mailbox || m.AppID != relaytest.ClientID {
			t.Errorf("%s: user=%s MAIL FROM %s, want %s", subj, m.AuthUser, m.MailFrom, w.mailbox)
		}
		hdr := string(m.Data[:bytes.Index(m.Data, []byte("\r\n\r\n"))+2])
		for _, line := range []string{w.from + "\r\n", "Reply-To: " + w.orig + "\r\n", "X-Original-From: " + w.orig + "\r\n"} {
			if !strings.Contains(hdr, "\r\n"+line) {
				t.Errorf("%s: header lacks %q:\n%s", subj, line, hdr)
			}
		}
		if got, sent := belowHeader(t, m.Data), belowHeader(t, w.sent); !bytes.Equal(got, sent) {
			t.Errorf("%s: body changed: %s", subj, firstDiff(got, sent))
		}
	}
	if st := e.cloud.Exchange.Stats(); st.MaxConcurrentPerMailbox[relaytest.Mailbox] > 3 || st.MaxConcurrentPerMailbox[secondMailbox] > 3 {
		t.Errorf("concurrency %v", st.MaxConcurrentPerMailbox)
	}
	if v := e.cloud.Exchange.Violations(); len(v) != 0 {
		t.Errorf("violations %q", v)
	}
	e.relay.stop()
	checkLogsSecret(t, e)
}

// A sender no rule matches is refused at MAIL FROM with 550 5.7.1 naming
// the config key, seen by swaks and smtplib; nothing reaches Exchange.
func TestE2EUnknownSenderRefused(t *testing.T) {
	t.Parallel()
	e := startWithRules(t, "mailbox: "+relaytest.Mailbox+"\nsenders:\n  - sender: \"*@app.example\"\n    rewrite: envelope\n")
	host, port := hostPort(t, e.smtp)
	sw := requireTool(t, "swaks")
	out, code := runTool(t, nil, sw, "--server", host, "--port", port, "--ehlo", "swaks.test",
		"--from", "intruder@elsewhere.example", "--to", "someone@fabrikam.example")
	if code != 23 || !strings.Contains(out, "<** 550 5.7.1 ") || !strings.Contains(out, "senders") {
		t.Errorf("swaks exit %d (want 23, refused at MAIL):\n%s", code, out)
	}
	res := pySend(t, e.smtp, []string{"intruder@elsewhere.example", "ok@app.example"}, "someone@fabrikam.example",
		[][]byte{testBody("intruder@elsewhere.example", "someone@fabrikam.example", "no"), testBody(relaytest.Mailbox, "someone@fabrikam.example", "yes")})
	if len(res) != 2 || !strings.HasPrefix(res[0], "refused 550 5.7.1 ") || !strings.Contains(res[0], "senders") || res[1] != "ok" {
		t.Errorf("python: %q", res)
	}
	msgs := e.waitMessages(1)
	if len(msgs) != 1 || !bytes.Contains(msgs[0].Data, []byte("Subject: yes")) {
		t.Errorf("delivered %d messages", len(msgs))
	}
}

// 200 messages from one sender, pacing off: the pool carries them on at
// most 3 upstream sessions and 3 AUTHs.
func TestE2EPoolSteadyState(t *testing.T) {
	t.Parallel()
	e := startWithRules(t, "mailbox: "+relaytest.Mailbox+"\n", "O365RELAY_MAILBOX_RATE=0")
	const n = 200
	from := make([]string, n)
	msgs := make([][]byte, n)
	for i := range n {
		from[i] = relaytest.Mailbox
		msgs[i] = testBody(relaytest.Mailbox, "someone@fabrikam.example", fmt.Sprintf("steady %d", i))
	}
	res := pySend(t, e.smtp, from, "someone@fabrikam.example", msgs)
	if len(res) != n {
		t.Fatalf("python: %d results", len(res))
	}
	e.waitMessages(n)
	st := e.cloud.Exchange.Stats()
	if st.Sessions > 3 || st.Auths > 3 || st.MaxConcurrentPerMailbox[relaytest.Mailbox] > 3 {
		t.Errorf("200 messages: %d sessions, %d AUTHs, max %d concurrent", st.Sessions, st.Auths, st.MaxConcurrentPerMailbox[relaytest.Mailbox])
	}
	t.Logf("200 messages: %d upstream sessions, %d AUTHs", st.Sessions, st.Auths)
	checkUpstreamClean(t, e.cloud)
}
