package main

import (
	"crypto/rsa"
	"crypto/tls"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/o365relay/o365relay/config/tlstest"
	"github.com/o365relay/o365relay/relay/relaytest"
)

// Listener TLS and local AUTH (README.md, Listening beyond loopback), end to
// end: the built binary with a certificate from a test CA, STARTTLS on
// listen and implicit TLS on listen_tls, accounts in auth_users, and real
// clients that verify the certificate against that CA (never with
// verification off).

const (
	e2eUser     = "billing-app"
	e2ePassword = "Corr3ct-h0rse-listener"
)

// listenerCert is the listener's PKI on disk.
type listenerCert struct {
	ca                *tlstest.CA
	caFile, cert, key string
	otherCA           string // a CA that did not sign the listener's certificate
	dir               string
}

func newListenerCert(t *testing.T) *listenerCert {
	t.Helper()
	dir := t.TempDir()
	ca, err := tlstest.NewCA("o365relay listener test CA")
	if err != nil {
		t.Fatal(err)
	}
	other, err := tlstest.NewCA("unrelated CA")
	if err != nil {
		t.Fatal(err)
	}
	lc := &listenerCert{ca: ca, dir: dir, caFile: filepath.Join(dir, "ca.pem"), otherCA: filepath.Join(dir, "other-ca.pem"),
		cert: filepath.Join(dir, "listener.crt"), key: filepath.Join(dir, "listener.key")}
	if err := ca.WriteFile(lc.caFile); err != nil {
		t.Fatal(err)
	}
	if err := other.WriteFile(lc.otherCA); err != nil {
		t.Fatal(err)
	}
	lc.issue(t, true)
	return lc
}

// issue writes a fresh certificate for 127.0.0.1 and returns its serial;
// withKey false keeps the old key file (a half-done rotation).
func (lc *listenerCert) issue(t *testing.T, withKey bool) *big.Int {
	t.Helper()
	c, err := lc.ca.ServerCert("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	var chain []byte
	for _, der := range c.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	// Write beside and rename, as a deployment tool (or Kubernetes'
	// symlink swap) would: the watcher never sees half a file.
	replace := func(path string, data []byte) {
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	if withKey {
		replace(lc.key, tlstest.PKCS1PEM(c.PrivateKey.(*rsa.PrivateKey)))
	}
	replace(lc.cert, chain)
	return c.Leaf.SerialNumber
}

// servedSerial dials the implicit-TLS port with a verifying Go client and
// returns the serial of the certificate served.
func (lc *listenerCert) servedSerial(t *testing.T, addr string) *big.Int {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
		&tls.Config{RootCAs: lc.ca.Pool(), ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber
}

type tlsRelay struct {
	*e2e
	lc      *listenerCert
	tlsAddr string
}

// startTLSRelay runs the relay with STARTTLS, implicit TLS and two
// accounts; allowed_networks is empty, so every client — loopback too —
// must authenticate.
func startTLSRelay(t *testing.T) *tlsRelay {
	t.Helper()
	lc := newListenerCert(t)
	hash, err := bcrypt.GenerateFromPassword([]byte(e2ePassword), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	cfg := writeTemp(t, "relay.yaml", []byte(fmt.Sprintf(`auth_users:
  - user: %s
    password_bcrypt: %q
    senders: [%s]
`, e2eUser, hash, relaytest.Mailbox)))
	cloud := newCloud(t)
	spool := t.TempDir()
	tlsAddr := freePort(t)
	env, smtpAddr, adminAddr := relayEnv(t, cloud, spool, "O365RELAY_ALLOWED_NETWORKS=",
		"O365RELAY_LISTEN_TLS_CERT="+lc.cert, "O365RELAY_LISTEN_TLS_KEY="+lc.key, "O365RELAY_LISTEN_TLS="+tlsAddr)
	p := startRelay(t, env, smtpAddr, "serve", "--config", cfg)
	e := &e2e{t: t, cloud: cloud, relay: p, smtp: smtpAddr, admin: adminAddr, spool: spool, env: env}
	t.Cleanup(func() {
		// The harness scans for secret settings and the listener's key;
		// the passwords, their AUTH payloads and the hash live in the
		// config file, so they are searched here.
		out := p.out.String()
		for what, n := range map[string]string{
			"the AUTH password":               e2ePassword,
			"the bcrypt hash":                 string(hash),
			"the AUTH PLAIN payload":          base64.StdEncoding.EncodeToString([]byte("\x00" + e2eUser + "\x00" + e2ePassword)),
			"the AUTH LOGIN password, base64": base64.StdEncoding.EncodeToString([]byte(e2ePassword)),
		} {
			if strings.Contains(out, n) {
				t.Errorf("relay output contains %s", what)
			}
		}
	})
	return &tlsRelay{e2e: e, lc: lc, tlsAddr: tlsAddr}
}

func TestE2EListenerTLSAndAuth(t *testing.T) {
	t.Parallel()
	r := startTLSRelay(t)
	host, port := hostPort(t, r.smtp)
	_, tlsPort := hostPort(t, r.tlsAddr)
	from, to := relaytest.Mailbox, "someone@fabrikam.example"
	msg := func(subject string) string {
		return writeTemp(t, strings.ReplaceAll(subject, " ", "-")+".eml",
			[]byte("From: <"+from+">\r\nTo: <"+to+">\r\nSubject: "+subject+"\r\n\r\nover TLS with AUTH\r\n"))
	}
	sw := requireTool(t, "swaks")
	swaks := func(args ...string) (string, int) {
		return runTool(t, nil, sw, append([]string{"--server", host, "--ehlo", "swaks.test", "--from", from, "--to", to,
			"--tls-verify", "--suppress-data"}, args...)...)
	}
	// swaks, STARTTLS + AUTH PLAIN, and implicit TLS + AUTH LOGIN.
	if out, code := swaks("--port", port, "--tls", "--tls-ca-path", r.lc.caFile, "--auth", "PLAIN",
		"--auth-user", e2eUser, "--auth-password", e2ePassword, "--data", "@"+msg("swaks starttls")); code != 0 {
		t.Fatalf("swaks --tls: exit %d\n%s", code, out)
	}
	if out, code := swaks("--port", tlsPort, "--tlsc", "--tls-ca-path", r.lc.caFile, "--auth", "LOGIN",
		"--auth-user", e2eUser, "--auth-password", e2ePassword, "--data", "@"+msg("swaks implicit")); code != 0 {
		t.Fatalf("swaks --tlsc: exit %d\n%s", code, out)
	}
	// Verification is real: a CA that did not sign the certificate fails
	// the handshake.
	if out, code := swaks("--port", port, "--tls", "--tls-ca-path", r.lc.otherCA, "--auth", "PLAIN",
		"--auth-user", e2eUser, "--auth-password", e2ePassword, "--data", "@"+msg("swaks wrong ca")); code == 0 {
		t.Fatalf("swaks accepted a certificate its CA did not sign:\n%s", out)
	}
	// No AUTH: 530 at MAIL FROM (allowed_networks is empty).
	if out, code := swaks("--port", port, "--tls", "--tls-ca-path", r.lc.caFile, "--data", "@"+msg("swaks no auth")); code == 0 || !strings.Contains(out, "530 5.7.0") {
		t.Fatalf("swaks without AUTH: exit %d\n%s", code, out)
	}

	// curl: STARTTLS required (--ssl-reqd) and smtps://.
	cu := requireTool(t, "curl")
	curl := func(subject, url string, extra ...string) {
		t.Helper()
		args := append([]string{"-sS", "--url", url, "--cacert", r.lc.caFile, "--user", e2eUser + ":" + e2ePassword,
			"--mail-from", from, "--mail-rcpt", to, "--upload-file", msg(subject)}, extra...)
		if out, code := runTool(t, nil, cu, args...); code != 0 {
			t.Fatalf("curl %s: exit %d\n%s", url, code, out)
		}
	}
	curl("curl starttls", "smtp://"+r.smtp+"/curl.test", "--ssl-reqd")
	curl("curl implicit", "smtps://"+r.tlsAddr+"/curl.test")

	// Python smtplib, verifying with a context that trusts only the test
	// CA: no AUTH (530), a wrong password (535), the right one over
	// implicit TLS, and a sender the account may not use (550 5.7.1).
	py := requireTool(t, "python3")
	script := `import smtplib,ssl,sys
host,port,tlsport,ca,user,pw,frm,to,msg=sys.argv[1:]
ctx=ssl.create_default_context(cafile=ca)
body=open(msg,"rb").read()
out=[]
s=smtplib.SMTP(host,int(port),local_hostname="python.test",timeout=30)
s.starttls(context=ctx)
try:
    s.sendmail(frm,[to],body); out.append("noauth ok")
except smtplib.SMTPSenderRefused as e:
    out.append("noauth %d" % e.smtp_code)
try:
    s.login(user,"not-"+pw); out.append("badpw ok")
except smtplib.SMTPAuthenticationError as e:
    out.append("badpw %d" % e.smtp_code)
s.quit()
s=smtplib.SMTP_SSL(host,int(tlsport),local_hostname="python.test",timeout=30,context=ctx)
s.login(user,pw)
s.sendmail(frm,[to],body); out.append("send ok")
try:
    s.sendmail("other@contoso.example",[to],body); out.append("sender ok")
except smtplib.SMTPSenderRefused as e:
    out.append("sender %d" % e.smtp_code)
s.quit()
print(",".join(out))`
	out, code := runTool(t, nil, py, "-c", script, host, port, tlsPort, r.lc.caFile, e2eUser, e2ePassword, from, to, msg("python implicit"))
	if code != 0 || strings.TrimSpace(out) != "noauth 530,badpw 535,send ok,sender 550" {
		t.Fatalf("python: exit %d: %s", code, out)
	}

	msgs := r.waitMessages(5)
	if len(msgs) != 5 {
		t.Fatalf("%d messages at Exchange, want 5", len(msgs))
	}
	for _, m := range msgs {
		if !strings.Contains(string(m.Data[:min(len(m.Data), 300)]), " with ESMTPSA id ") {
			t.Errorf("Received: does not say ESMTPSA: %s", preview(m.Data))
		}
	}
	checkUpstreamClean(t, r.cloud)
	r.relay.stop()
}

// The listener certificate rotated on disk is served from the next
// connection; a pair that does not match is refused and the one in use
// stays.
func TestE2EListenerCertificateRotation(t *testing.T) {
	t.Parallel()
	r := startTLSRelay(t)
	first := r.lc.servedSerial(t, r.tlsAddr)
	next := r.lc.issue(t, true)
	if next.Cmp(first) == 0 {
		t.Fatal("same serial twice")
	}
	// The watcher (every 5 s) logs the certificate it loaded, with its
	// serial; it is served from then on.
	r.relay.waitLog("the rotated certificate loaded", fields{"msg": "listener certificate loaded", "serial": next.String()})
	if got := r.lc.servedSerial(t, r.tlsAddr); got.Cmp(next) != 0 {
		t.Fatalf("serving serial %s after loading %s", got, next)
	}
	// A new certificate without its key: refused, logged, old one kept.
	// (The rotation above may have been refused once too, if the watcher
	// looked between its two renames: count from here.)
	refusal := fields{"msg": "listener certificate reload refused; the certificate in use stays in use", "path": r.lc.cert}
	before := len(r.relay.logged(refusal))
	r.lc.issue(t, false)
	r.relay.waitLogged("the mismatched pair refused", before+1, refusal)
	if got := r.lc.servedSerial(t, r.tlsAddr); got.Cmp(next) != 0 {
		t.Fatalf("after a refused reload serving %s, want %s", got, next)
	}
	r.relay.stop()
}

// Listener mistakes stop serve with exit 2 and name the setting.
func TestE2EListenerConfigErrorsExit2(t *testing.T) {
	t.Parallel()
	lc := newListenerCert(t)
	hash, err := bcrypt.GenerateFromPassword([]byte(e2ePassword), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	users := writeTemp(t, "users.yaml", []byte(fmt.Sprintf("auth_users:\n  - user: a\n    password_bcrypt: %q\n    senders: [\"*\"]\n", hash)))
	badHash := writeTemp(t, "bad.yaml", []byte("auth_users:\n  - user: a\n    password_bcrypt: not-a-hash\n    senders: [\"*\"]\n"))
	otherKey := filepath.Join(lc.dir, "other.key")
	c, err := lc.ca.ServerCert("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(otherKey, tlstest.PKCS1PEM(c.PrivateKey.(*rsa.PrivateKey)), 0o600); err != nil {
		t.Fatal(err)
	}
	tlsEnv := []string{"O365RELAY_LISTEN_TLS_CERT=" + lc.cert, "O365RELAY_LISTEN_TLS_KEY=" + lc.key}
	for _, tc := range []struct {
		env  []string
		args []string
		want []string
	}{
		{nil, []string{"--config", users}, []string{"auth_users", "only over TLS", "listen_tls_cert"}},
		{tlsEnv, []string{"--listen", "0.0.0.0:2525"}, []string{"--listen", "not a loopback address", "allowed_networks", "auth_users"}},
		{[]string{"O365RELAY_LISTEN_TLS_CERT=" + lc.cert, "O365RELAY_LISTEN_TLS_KEY=" + otherKey}, nil, []string{"O365RELAY_LISTEN_TLS_KEY", "does not go with"}},
		{tlsEnv, []string{"--config", badHash}, []string{"auth_users", "not a bcrypt hash"}},
	} {
		out, code := runToolEnv(t, tc.env, binPath, append([]string{"serve"}, tc.args...)...)
		if code != 2 {
			t.Errorf("%v %v: exit %d, want 2:\n%s", tc.env, tc.args, code, out)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%v %v: output lacks %q:\n%s", tc.env, tc.args, w, out)
			}
		}
		if strings.Contains(out, string(hash)) {
			t.Errorf("output shows the hash:\n%s", out)
		}
	}
}
