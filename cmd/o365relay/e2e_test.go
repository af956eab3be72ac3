package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/o365relay/o365relay/relay/exchangetest"
	"github.com/o365relay/o365relay/relay/relaytest"
)

// e2e is one fake Microsoft 365 and one relay process between it and the
// test's clients.
type e2e struct {
	t     *testing.T
	cloud *relaytest.Cloud
	relay *proc
	smtp  string // the relay's SMTP address
	admin string
	spool string
	env   []string
}

func newCloud(t *testing.T) *relaytest.Cloud {
	t.Helper()
	cloud, err := relaytest.New(relaytest.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cloud.Close(); err != nil {
			t.Error(err)
		}
	})
	return cloud
}

// relayEnv is the environment of a relay pointed at cloud, with its own
// ports and spool; extra entries override earlier ones.
func relayEnv(t *testing.T, cloud *relaytest.Cloud, spool string, extra ...string) (env []string, smtpAddr, adminAddr string) {
	t.Helper()
	smtpAddr, adminAddr = freePort(t), freePort(t)
	env = append(cloud.Env(),
		"O365RELAY_LISTEN="+smtpAddr,
		"O365RELAY_ADMIN_LISTEN="+adminAddr,
		"O365RELAY_SPOOL_DIR="+spool,
		"O365RELAY_LOG_LEVEL=debug",
		"O365RELAY_HOSTNAME=relay.test",
	)
	return append(env, extra...), smtpAddr, adminAddr
}

func startE2E(t *testing.T, cloud *relaytest.Cloud, extra ...string) *e2e {
	t.Helper()
	if cloud == nil {
		cloud = newCloud(t)
	}
	spool := t.TempDir()
	env, smtpAddr, adminAddr := relayEnv(t, cloud, spool, extra...)
	p := startRelay(t, env, smtpAddr, "serve")
	return &e2e{t: t, cloud: cloud, relay: p, smtp: smtpAddr, admin: adminAddr, spool: spool, env: env}
}

// waitMessages waits until Exchange has accepted n messages.
func (e *e2e) waitMessages(n int) []exchangetest.Message {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	if err := e.cloud.Exchange.WaitMessages(ctx, n); err != nil {
		e.t.Fatalf("%v\nrelay output:\n%s", err, e.relay.out.String())
	}
	return e.cloud.Exchange.Messages()
}

// checkUpstreamClean asserts what every e2e run must show: every session
// used STARTTLS before AUTH, nothing secret went over plaintext, and the
// fake saw no protocol violation.
func checkUpstreamClean(t *testing.T, cloud *relaytest.Cloud) {
	t.Helper()
	st := cloud.Exchange.Stats()
	if st.AuthBeforeTLS != 0 || cloud.Exchange.PlainAuthAttempts() != 0 {
		t.Errorf("AUTH before STARTTLS: %d", st.AuthBeforeTLS)
	}
	if v := cloud.Exchange.Violations(); len(v) != 0 {
		t.Errorf("protocol violations: %q", v)
	}
	for _, m := range cloud.Exchange.Messages() {
		if !m.TLS {
			t.Errorf("message from session %d delivered without TLS", m.Session)
		}
		if m.AuthUser != relaytest.Mailbox || m.AppID != relaytest.ClientID {
			t.Errorf("authenticated as %s (app %s)", m.AuthUser, m.AppID)
		}
	}
}

// stripReceived removes the one Received: header the relay prepends (a
// folded header: continuation lines start with a tab) and fails if there is
// not exactly one at the top.
func stripReceived(t *testing.T, data []byte) []byte {
	t.Helper()
	if !bytes.HasPrefix(data, []byte("Received: from ")) {
		t.Fatalf("message does not start with the relay's Received: header:\n%s", preview(data))
	}
	i := 0
	for {
		j := bytes.Index(data[i:], []byte("\r\n"))
		if j < 0 {
			t.Fatal("unterminated Received: header")
		}
		i += j + 2
		if i >= len(data) || (data[i] != '\t' && data[i] != ' ') {
			break
		}
	}
	if bytes.HasPrefix(data[i:], []byte("Received: ")) {
		t.Fatalf("two Received: headers")
	}
	return data[i:]
}

// body builds a message that exercises what a relay can get wrong: lines
// starting with a dot (dot-stuffing), a line of just a dot, 8-bit text, a
// 998-octet line (RFC 5322 §2.1.1's limit), trailing spaces.
func testBody(from, to, subject string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nMessage-ID: <%s@e2e.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n", from, to, subject, strings.ReplaceAll(subject, " ", "."))
	b.WriteString(".leading dot\r\n..two dots\r\n.\r\n")
	b.WriteString("8-bit: café Grüße Ωμέγα 日本語\r\n")
	b.WriteString(strings.Repeat("x", 998) + "\r\n")
	b.WriteString("trailing spaces   \r\n\r\nlast line\r\n")
	return b.Bytes()
}

func writeTemp(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Real third-party clients (docs/design.md#tests-use-real-parts), four of
// them, through the built binary; each message byte-identical at Exchange
// (docs/design.md#what-goes-out-is-what-came-in); exactly one token request
// for the whole run; STARTTLS before every AUTH.
func TestE2EThirdPartyClients(t *testing.T) {
	t.Parallel()
	e := startE2E(t, nil)
	host, port := hostPort(t, e.smtp)
	from, to := relaytest.Mailbox, "someone@fabrikam.example"

	type client struct {
		name string
		run  func(msg []byte) (string, int)
	}
	clients := []client{
		{"swaks", func(msg []byte) (string, int) {
			sw := requireTool(t, "swaks")
			return runTool(t, nil, sw, "--server", host, "--port", port, "--ehlo", "swaks.test",
				"--from", from, "--to", to, "--data", "@"+writeTemp(t, "swaks.eml", msg), "--suppress-data")
		}},
		{"curl", func(msg []byte) (string, int) {
			c := requireTool(t, "curl")
			// --crlf turns each LF into CRLF (curl 7.88 also turns an
			// existing CRLF into CR CR LF), so give it Unix line endings.
			lf := bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n"))
			return runTool(t, nil, c, "-sS", "--url", "smtp://"+e.smtp+"/curl.test", "--mail-from", from, "--mail-rcpt", to,
				"--crlf", "--upload-file", writeTemp(t, "curl.eml", lf))
		}},
		{"msmtp", func(msg []byte) (string, int) {
			m := requireTool(t, "msmtp")
			return runTool(t, msg, m, "--host="+host, "--port="+port, "--auth=off", "--tls=off", "--domain=msmtp.test", "--from="+from, to)
		}},
		{"python smtplib", func(msg []byte) (string, int) {
			py := requireTool(t, "python3")
			script := `import smtplib,sys
s=smtplib.SMTP(sys.argv[1],int(sys.argv[2]),local_hostname="python.test",timeout=60)
print(s.sendmail(sys.argv[3],[sys.argv[4]],open(sys.argv[5],"rb").read()))
s.quit()`
			return runTool(t, nil, py, "-c", script, host, port, from, to, writeTemp(t, "py.eml", msg))
		}},
	}
	sent := map[string][]byte{}
	for _, c := range clients {
		msg := testBody(from, to, "e2e "+c.name)
		out, code := c.run(msg)
		if code != 0 {
			t.Fatalf("%s exited %d:\n%s\nrelay:\n%s", c.name, code, out, e.relay.out.String())
		}
		want := msg
		if c.name == "swaks" {
			// swaks always appends a CRLF of its own before the final
			// dot, even to data that ends in one (test-tools.md).
			want = append(append([]byte(nil), msg...), '\r', '\n')
		}
		sent[string(msg[bytes.Index(msg, []byte("Subject: ")):][:40])] = want
	}
	msgs := e.waitMessages(len(clients))
	for _, m := range msgs {
		body := stripReceived(t, m.Data)
		key := string(body[bytes.Index(body, []byte("Subject: ")):][:40])
		want, ok := sent[key]
		if !ok {
			t.Errorf("unexpected message:\n%s", preview(body))
			continue
		}
		// msmtp adds a Date: header when the message has none; that is
		// the client's doing, so compare what follows it.
		if bytes.HasPrefix(body, []byte("Date: ")) && !bytes.HasPrefix(want, []byte("Date: ")) {
			body = body[bytes.Index(body, []byte("\r\n"))+2:]
		}
		if !bytes.Equal(body, want) {
			t.Errorf("%s: body differs: %s", key, firstDiff(body, want))
		}
		if m.MailFrom != from || len(m.RcptTo) != 1 || m.RcptTo[0] != to {
			t.Errorf("envelope %s -> %v", m.MailFrom, m.RcptTo)
		}
	}
	if n := e.cloud.Entra.TokenRequests(); n != 1 {
		t.Errorf("token requests: %d, want exactly 1 for the whole run", n)
	}
	checkUpstreamClean(t, e.cloud)
	e.relay.stop()
	checkLogsSecret(t, e)
}

// A 20 MB attachment (base64 in a MIME message, the way mail clients send
// one) arrives byte-identical.
func TestE2ELargeAttachment(t *testing.T) {
	if testing.Short() {
		t.Skip("20 MB through the race-instrumented binary")
	}
	t.Parallel()
	e := startE2E(t, nil)
	raw := make([]byte, 15<<20)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	b.WriteString("From: <" + relaytest.Mailbox + ">\r\nTo: <big@fabrikam.example>\r\nSubject: 20 MB\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	for i := 0; i < len(raw); i += 57 { // 57 bytes = one 76-character line (RFC 2045 §6.8)
		b.WriteString(base64.StdEncoding.EncodeToString(raw[i:min(i+57, len(raw))]) + "\r\n")
	}
	b.WriteString("--b1--\r\n")
	msg := b.Bytes()
	if len(msg) < 20<<20 {
		t.Fatalf("message is only %d bytes", len(msg))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := sendOne(ctx, e.smtp, relaytest.Mailbox, "big@fabrikam.example", msg); err != nil {
		t.Fatal(err)
	}
	m := e.waitMessages(1)[0]
	if got := stripReceived(t, m.Data); !bytes.Equal(got, msg) {
		t.Errorf("20 MB message differs: got %d bytes, sent %d", len(got), len(msg))
	}
	checkUpstreamClean(t, e.cloud)
}

// A client outside allowed_networks is refused at connect and the attempt
// is logged with its address.
func TestE2ERefusedNetwork(t *testing.T) {
	t.Parallel()
	e := startE2E(t, nil, "O365RELAY_ALLOWED_NETWORKS=192.0.2.0/24")
	c, err := net.DialTimeout("tcp", e.smtp, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 512)
	n, _ := c.Read(buf)
	if !strings.HasPrefix(string(buf[:n]), "554 5.7.1") {
		t.Errorf("refused client got %q, want 554 5.7.1", buf[:n])
	}
	e.relay.waitLog("the refusal logged with the client address", fields{"msg": "connection refused", "client": "127.0.0.1", "reason": "network"})
}

// checkLogsSecret searches everything the relay printed (at debug level) for
// secrets: any JWT (tokens and client assertions both start with the
// base64url of '{"'), the XOAUTH2 payload in clear or base64, the private
// key's PEM body, and message bodies.
func checkLogsSecret(t *testing.T, e *e2e) {
	t.Helper()
	out := e.relay.out.String()
	key, err := os.ReadFile(e.cloud.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	needles := map[string]string{
		"a JWT (token or assertion)":  "eyJ",
		"a bearer token":              "Bearer ",
		"the XOAUTH2 payload":         "auth=Bearer",
		"the XOAUTH2 payload, base64": base64.StdEncoding.EncodeToString([]byte("user=" + relaytest.Mailbox))[:16],
		"a message body":              "leading dot",
		"8-bit body text":             "Grüße",
	}
	// Three lines from the middle of the private key.
	i := bytes.Index(key, []byte("PRIVATE KEY-----\n"))
	if i < 0 {
		t.Fatal("no private key in the credential file")
	}
	for _, l := range strings.Split(string(key[i:]), "\n")[3:6] {
		if strings.Contains(out, l) {
			t.Errorf("relay output contains a line of the private key")
		}
	}
	for what, n := range needles {
		if strings.Contains(out, n) {
			t.Errorf("relay output contains %s (%q)", what, n)
		}
	}
	if !strings.Contains(out, `"log_level":"debug (environment)"`) {
		t.Errorf("the run was not at debug level; the secrecy check proves little")
	}
}

// firstDiff describes where two byte strings first differ.
func firstDiff(got, want []byte) string {
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	lo := max(0, i-20)
	return fmt.Sprintf("got %d bytes, want %d; first difference at %d: got %q, want %q",
		len(got), len(want), i, got[lo:min(len(got), i+20)], want[lo:min(len(want), i+20)])
}
