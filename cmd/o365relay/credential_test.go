package main

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/o365relay/o365relay/config/tlstest"
	"github.com/o365relay/o365relay/config/waitfor"
	"github.com/o365relay/o365relay/relay/exchangetest"
	"github.com/o365relay/o365relay/relay/relaytest"
	"github.com/o365relay/o365relay/relay/status"
	"github.com/o365relay/o365relay/token/entratest"
)

// withEnv replaces or adds KEY=value entries.
func withEnv(env []string, kv ...string) []string {
	out := append([]string(nil), env...)
	for _, e := range kv {
		k, _, _ := strings.Cut(e, "=")
		replaced := false
		for i, o := range out {
			if strings.HasPrefix(o, k+"=") {
				out[i], replaced = e, true
			}
		}
		if !replaced {
			out = append(out, e)
		}
	}
	return out
}

// without drops KEY= entries.
func without(env []string, keys ...string) []string {
	var out []string
	for _, e := range env {
		drop := false
		for _, k := range keys {
			drop = drop || strings.HasPrefix(e, k+"=")
		}
		if !drop {
			out = append(out, e)
		}
	}
	return out
}

func sendAndWait(t *testing.T, cloud *relaytest.Cloud, p *proc, addr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := sendOne(ctx, addr, relaytest.Mailbox, "someone@fabrikam.example", testBody(relaytest.Mailbox, "someone@fabrikam.example", "credential")); err != nil {
		t.Fatal(err)
	}
	if err := cloud.Exchange.WaitMessages(ctx, 1); err != nil {
		t.Fatalf("%v\n%s", err, p.out.String())
	}
	checkUpstreamClean(t, cloud)
}

// Every credential form works against the strict fake Entra ID, which
// verifies the assertion's signature against the registered certificate.
func TestE2ECredentialForms(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		setup func(t *testing.T, c *relaytest.Cloud, dir string) []string
	}{
		{"PEM PKCS#1", func(t *testing.T, c *relaytest.Cloud, dir string) []string { return nil }},
		{"PEM PKCS#8", func(t *testing.T, c *relaytest.Cloud, dir string) []string {
			k, err := tlstest.PKCS8PEM(c.Key)
			if err != nil {
				t.Fatal(err)
			}
			// Key first, then certificate: order in the file must not matter.
			return []string{"AZURE_CLIENT_CERTIFICATE_PATH=" + writeFile(t, dir, "app8.pem", append(k, tlstest.CertPEM(c.Cert)...))}
		}},
		{"PFX with password", func(t *testing.T, c *relaytest.Cloud, dir string) []string {
			// AES-256 + PBKDF2, as Windows and Key Vault export today.
			pfx, err := pkcs12.Modern.Encode(c.Key, c.Cert, nil, "pfx-pass-1")
			if err != nil {
				t.Fatal(err)
			}
			return []string{"AZURE_CLIENT_CERTIFICATE_PATH=" + writeFile(t, dir, "app.pfx", pfx), "AZURE_CLIENT_CERTIFICATE_PASSWORD=pfx-pass-1"}
		}},
		{"RS256 assertion", func(t *testing.T, c *relaytest.Cloud, dir string) []string {
			return []string{"O365RELAY_ASSERTION_ALGORITHM=RS256"}
		}},
		{"client secret", func(t *testing.T, c *relaytest.Cloud, dir string) []string {
			c.Entra.AddApp(entratest.App{ClientID: relaytest.ClientID, ObjectID: relaytest.ObjectID, Secret: "s3cret~value", Roles: []string{exchangetest.RoleSendAsApp}})
			return []string{"AZURE_CLIENT_CERTIFICATE_PATH=", "AZURE_CLIENT_SECRET=s3cret~value"}
		}},
		{"federated token file", func(t *testing.T, c *relaytest.Cloud, dir string) []string {
			cluster, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				t.Fatal(err)
			}
			sub := "system:serviceaccount:mail:app"
			c.Entra.AddApp(entratest.App{ClientID: relaytest.ClientID, ObjectID: relaytest.ObjectID, Roles: []string{exchangetest.RoleSendAsApp},
				Federated: []entratest.Federated{{Issuer: "https://oidc.example.test/cluster", Subject: sub, Keys: []crypto.PublicKey{&cluster.PublicKey}}}})
			now := time.Now()
			tok := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{
				"iss": "https://oidc.example.test/cluster", "sub": sub, "aud": []string{entratest.DefaultFederatedAudience},
				"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
			})
			s, err := tok.SignedString(cluster)
			if err != nil {
				t.Fatal(err)
			}
			return []string{"AZURE_CLIENT_CERTIFICATE_PATH=", "AZURE_FEDERATED_TOKEN_FILE=" + writeFile(t, dir, "token", []byte(s+"\n"))}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cloud := newCloud(t)
			env, smtpAddr, _ := relayEnv(t, cloud, t.TempDir())
			extra := tc.setup(t, cloud, t.TempDir())
			for _, kv := range extra {
				if strings.HasSuffix(kv, "=") {
					env = without(env, strings.TrimSuffix(kv, "="))
				} else {
					env = withEnv(env, kv)
				}
			}
			p := startRelay(t, env, smtpAddr, "serve")
			sendAndWait(t, cloud, p, smtpAddr)
			if n := cloud.Entra.TokenRequests(); n != 1 {
				t.Errorf("%d token requests", n)
			}
			p.stop()
			if strings.Contains(p.out.String(), "s3cret~value") || strings.Contains(p.out.String(), "pfx-pass-1") {
				t.Error("a credential reached the log")
			}
		})
	}
}

// A certificate Entra ID does not know: the daemon runs and is ready (the
// message is spooled: readiness never depends on the token), says
// AADSTS700027 with the setup step to revisit in its log and its status;
// after the certificate is uploaded the queued message goes out.
func TestE2EUnregisteredCertificate(t *testing.T) {
	t.Parallel()
	cloud := newCloud(t)
	other, otherKey, err := tlstest.SelfSigned("not uploaded", time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := writeFile(t, dir, "other.pem", append(tlstest.CertPEM(other), tlstest.PKCS1PEM(otherKey)...))
	spoolDir := t.TempDir()
	env, smtpAddr, adminAddr := relayEnv(t, cloud, spoolDir)
	env = withEnv(env, "AZURE_CLIENT_CERTIFICATE_PATH="+path)
	p := startRelay(t, env, smtpAddr, "serve")

	failed := p.waitLog("Entra ID's refusal", fields{"msg": "token request failed", "credential": "certificate"})
	if e := failed.str("error"); !strings.Contains(e, "AADSTS700027") || !strings.Contains(e, "Certificates & secrets") {
		t.Errorf("the refusal does not say AADSTS700027 with the setup step to revisit: %s", failed)
	}
	if code, body := readyz(t, adminAddr); code != http.StatusOK {
		t.Errorf("/readyz %d without a token, want 200 (mail is safe in the spool): %s", code, body)
	}
	if st := getStatus(t, adminAddr); st.Token.State != status.TokenNone || st.Token.AADSTS != 700027 {
		t.Errorf("/status token %+v, want none with AADSTS700027", st.Token)
	}

	// Mail is still accepted (spooled) while Entra refuses us...
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if _, err := sendOne(ctx, smtpAddr, relaytest.Mailbox, "a@fabrikam.example", testBody(relaytest.Mailbox, "a@fabrikam.example", "queued")); err != nil {
		t.Fatal(err)
	}
	// ...and delivered once the admin uploads the certificate and asks for
	// a retry (otherwise it waits out its backoff, 1 minute at first).
	if err := cloud.Entra.RegisterCert(relaytest.ClientID, other); err != nil {
		t.Fatal(err)
	}
	p.waitLog("a token for the uploaded certificate", fields{"msg": "token acquired"})
	if o, code := runTool(t, nil, binPath, "queue", "--spool-dir", spoolDir, "retry", "all"); code != 0 {
		t.Fatalf("queue retry all: exit %d\n%s", code, o)
	}
	if err := cloud.Exchange.WaitMessages(ctx, 1); err != nil {
		t.Fatalf("%v\n%s", err, p.out.String())
	}
	if o, code := runTool(t, nil, binPath, "healthcheck", "--admin-listen", adminAddr); code != 0 {
		t.Errorf("healthcheck exit %d after the token, want 0:\n%s", code, o)
	}
	p.stop()
}

// A key that does not belong to the certificate stops the daemon at start.
func TestE2EKeyMismatchExitsAtStart(t *testing.T) {
	t.Parallel()
	cloud := newCloud(t)
	_, otherKey, err := tlstest.SelfSigned("other", time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	path := writeFile(t, t.TempDir(), "mismatch.pem", append(tlstest.CertPEM(cloud.Cert), tlstest.PKCS1PEM(otherKey)...))
	env, _, _ := relayEnv(t, cloud, t.TempDir())
	p := startRelay(t, withEnv(env, "AZURE_CLIENT_CERTIFICATE_PATH="+path), "", "serve")
	err = waitfor.Recv(t, p.done, "the relay to exit at start with a mismatched key")
	p.done <- err
	if err == nil {
		t.Fatal("relay exited 0")
	}
	if out := p.out.String(); !strings.Contains(out, "key does not match the certificate") || !strings.Contains(out, "AZURE_CLIENT_CERTIFICATE_PATH") {
		t.Errorf("exit message does not explain:\n%s", out)
	}
	if cloud.Entra.TokenRequests() != 0 {
		t.Error("a token was requested with a mismatched key")
	}
}

// Configuration mistakes stop `serve` with exit 2 and a message naming the
// setting.
func TestE2EConfigErrorsExit2(t *testing.T) {
	t.Parallel()
	cases := []struct {
		env  []string
		args []string
		want []string
	}{
		{[]string{"O365RELAY_LISTN=127.0.0.1:2525"}, nil, []string{"O365RELAY_LISTN", "did you mean O365RELAY_LISTEN"}},
		{[]string{"O365RELAY_ALLOWED_NETWORKS=10.1.2.3/8"}, nil, []string{"O365RELAY_ALLOWED_NETWORKS", "host bits"}},
		{nil, []string{"--listen", "0.0.0.0:2525"}, []string{"--listen", "allowed_networks"}},
		{nil, nil, []string{"AZURE_TENANT_ID", "AZURE_CLIENT_ID", "O365RELAY_MAILBOX", "AZURE_CLIENT_CERTIFICATE_PATH"}},
		{nil, []string{"--config", "/nonexistent.yaml"}, []string{"/nonexistent.yaml"}},
	}
	for _, tc := range cases {
		out, code := runToolEnv(t, tc.env, binPath, append([]string{"serve"}, tc.args...)...)
		if code != 2 {
			t.Errorf("%v %v: exit %d, want 2:\n%s", tc.env, tc.args, code, out)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%v %v: output lacks %q:\n%s", tc.env, tc.args, w, out)
			}
		}
	}
}

// runToolEnv runs a command with only PATH, HOME and env in its environment.
func runToolEnv(t *testing.T, env []string, name string, args ...string) (string, int) {
	t.Helper()
	return runToolWith(t, append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}, env...), nil, name, args...)
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
