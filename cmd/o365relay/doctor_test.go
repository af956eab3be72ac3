package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/o365relay/o365relay/config/tlstest"
	"github.com/o365relay/o365relay/relay/doctor"
	"github.com/o365relay/o365relay/relay/exchangetest"
	"github.com/o365relay/o365relay/relay/relaytest"
)

// The built binary against the fakes: the checklist a user sees. The
// library tests (relay/doctor) cover every mapped failure; these cover the
// command: the same configuration as serve, the ✔/✘ lines, the fix block,
// --json and the exit status.

// doctorEnv is the environment of a relay pointed at cloud.
func doctorEnv(t *testing.T, cloud *relaytest.Cloud, extra ...string) []string {
	t.Helper()
	env, _, _ := relayEnv(t, cloud, t.TempDir())
	return withEnv(env, extra...)
}

// line returns the output line starting with prefix.
func line(t *testing.T, out, prefix string) string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	t.Fatalf("no line starting with %q:\n%s", prefix, out)
	return ""
}

// One fake Microsoft 365 for the checks that differ only in the relay's
// settings (a cloud costs seconds of key generation under -race); all good
// runs first, while the fake has seen nothing else.
func TestDoctorCommand(t *testing.T) {
	t.Parallel()
	cloud := newCloud(t)
	t.Run("all good", func(t *testing.T) { doctorAllGood(t, cloud) })
	t.Run("unregistered certificate", func(t *testing.T) { doctorUnregisteredCertificate(t, cloud) })
	t.Run("key mismatch", func(t *testing.T) { doctorKeyMismatch(t, cloud) })
}

func doctorAllGood(t *testing.T, cloud *relaytest.Cloud) {
	env := doctorEnv(t, cloud)
	out, code := runToolEnv(t, env, binPath, "doctor")
	if code != 0 {
		t.Fatalf("doctor exit %d:\n%s", code, out)
	}
	for _, p := range []string{"✔ 1 configuration: ", "✔ 1 clock: ", "✔ 2 credential: ", "✔ 3 token: ", "✔ 4 claims: ", "✔ 5 upstream: ",
		"✔ 6 auth " + relaytest.Mailbox + ": ", "✔ 7 spool: ", "✔ 7 listener: "} {
		line(t, out, p)
	}
	if l := line(t, out, "✔ 2 credential: "); !strings.Contains(l, "SHA-1 thumbprint ") || !strings.Contains(l, "SHA-256 ") {
		t.Errorf("no thumbprints: %s", l)
	}
	if !strings.Contains(out, "All checks passed.") || strings.Contains(out, "✘") {
		t.Errorf("output:\n%s", out)
	}
	if strings.Contains(out, "eyJ") {
		t.Errorf("output contains a JWT:\n%s", out)
	}

	// --json: the same checks, parseable.
	out, code = runToolEnv(t, env, binPath, "doctor", "--json")
	if code != 0 {
		t.Fatalf("doctor --json exit %d:\n%s", code, out)
	}
	var rep doctor.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("--json output does not parse: %v\n%s", err, out)
	}
	if !rep.OK || len(rep.Checks) != 10 || rep.Find("auth").Target != relaytest.Mailbox || rep.Find("claims").Details["oid"] != relaytest.ObjectID {
		t.Errorf("report: %+v", rep)
	}
	if n := len(cloud.Exchange.Messages()); n != 0 {
		t.Errorf("the doctor sent %d messages", n)
	}
	checkUpstreamClean(t, cloud)
}

// A certificate never uploaded: ✘ 3 token with AADSTS700027, the Azure
// step, the thumbprint the relay presents, and exit 1 (also with --json).
func doctorUnregisteredCertificate(t *testing.T, cloud *relaytest.Cloud) {
	cert, key, err := tlstest.SelfSigned("not uploaded", time.Now().Add(-time.Hour), time.Now().Add(90*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	path := writeFile(t, t.TempDir(), "new.pem", append(tlstest.CertPEM(cert), tlstest.PKCS1PEM(key)...))
	env := doctorEnv(t, cloud, "AZURE_CLIENT_CERTIFICATE_PATH="+path)
	out, code := runToolEnv(t, env, binPath, "doctor")
	if code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", code, out)
	}
	l := line(t, out, "✘ 3 token: ")
	if !strings.Contains(l, "AADSTS700027") || !strings.Contains(l, "wait 2 minutes after uploading") {
		t.Errorf("token line: %s", l)
	}
	tp := ""
	for _, f := range strings.Fields(line(t, out, "✔ 2 credential: ")) {
		if len(f) == 40 && strings.ToUpper(f) == f {
			tp = f
		}
	}
	if tp == "" {
		t.Fatalf("no SHA-1 thumbprint on the credential line:\n%s", out)
	}
	for _, w := range []string{"    fix (Azure step 3):", "must list thumbprint " + tp, "Upload certificate", relaytest.ClientID} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
	line(t, out, "- 4 claims: skipped")
	if !strings.Contains(out, "check(s) failed") {
		t.Errorf("no summary:\n%s", out)
	}
	out, code = runToolEnv(t, env, binPath, "doctor", "--json")
	var rep doctor.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != 1 || rep.OK {
		t.Fatalf("--json: exit %d, %v\n%s", code, err, out)
	}
	if c := rep.Find("token"); c.Status != doctor.Fail || c.Details["aadsts"] != "700027" || len(c.AzureSteps) != 1 || c.AzureSteps[0] != 3 {
		t.Errorf("token check: %+v", c)
	}
}

// SMTP AUTH disabled for the mailbox: ✘ 6 with 535 5.7.139 and the
// Set-CASMailbox command for that mailbox.
func TestDoctorSMTPAuthDisabled(t *testing.T) {
	t.Parallel()
	cloud, err := relaytest.New(relaytest.Options{Dir: t.TempDir(), Exchange: func(o *exchangetest.Options) {
		o.Mailboxes[relaytest.Mailbox] = exchangetest.Mailbox{Apps: []string{relaytest.ClientID}, AuthDisabled: true}
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cloud.Close(); err != nil {
			t.Error(err)
		}
	})
	out, code := runToolEnv(t, doctorEnv(t, cloud), binPath, "doctor")
	if code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", code, out)
	}
	if l := line(t, out, "✘ 6 auth "+relaytest.Mailbox+": "); !strings.Contains(l, "535 5.7.139") {
		t.Errorf("auth line: %s", l)
	}
	for _, w := range []string{"    fix (Azure step 7):", "Set-CASMailbox -Identity " + relaytest.Mailbox + " -SmtpClientAuthenticationDisabled $false", "Security Defaults"} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
}

// A key that is not the certificate's: ✘ 2, the openssl commands that
// show it, no token request.
func doctorKeyMismatch(t *testing.T, cloud *relaytest.Cloud) {
	before := cloud.Entra.TokenRequests()
	_, otherKey, err := tlstest.SelfSigned("other", time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	path := writeFile(t, t.TempDir(), "mismatch.pem", append(tlstest.CertPEM(cloud.Cert), tlstest.PKCS1PEM(otherKey)...))
	out, code := runToolEnv(t, doctorEnv(t, cloud, "AZURE_CLIENT_CERTIFICATE_PATH="+path), binPath, "doctor")
	if code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", code, out)
	}
	if l := line(t, out, "✘ 2 credential: "); !strings.Contains(l, "key does not match the certificate") {
		t.Errorf("credential line: %s", l)
	}
	if !strings.Contains(out, "openssl pkey -pubout -in "+path+" | openssl sha256") {
		t.Errorf("no openssl comparison:\n%s", out)
	}
	line(t, out, "- 3 token: skipped")
	if n := cloud.Entra.TokenRequests() - before; n != 0 {
		t.Errorf("%d token requests with a mismatched key", n)
	}
}

// A configuration that does not load is ✘ 1, not a bare error; missing
// identity settings name the variables.
func TestDoctorConfiguration(t *testing.T) {
	t.Parallel()
	out, code := runToolEnv(t, []string{"O365RELAY_LISTN=127.0.0.1:2525"}, binPath, "doctor")
	if code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", code, out)
	}
	if l := line(t, out, "✘ 1 configuration: "); !strings.Contains(l, "did you mean O365RELAY_LISTEN") {
		t.Errorf("configuration line: %s", l)
	}
	out, code = runToolEnv(t, []string{"O365RELAY_SPOOL_DIR=" + t.TempDir(), "O365RELAY_LISTEN=" + freePort(t), "O365RELAY_ADMIN_LISTEN="}, binPath, "doctor")
	if code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", code, out)
	}
	l := line(t, out, "✘ 1 configuration: ")
	for _, w := range []string{"AZURE_TENANT_ID", "AZURE_CLIENT_ID", "O365RELAY_MAILBOX", "AZURE_CLIENT_CERTIFICATE_PATH"} {
		if !strings.Contains(l, w) {
			t.Errorf("configuration line lacks %s: %s", w, l)
		}
	}
	if !strings.Contains(out, "fix (Azure step 1):") {
		t.Errorf("no Azure step:\n%s", out)
	}
	if out, code := runToolEnv(t, nil, binPath, "doctor", "--no-such-flag"); code != 2 {
		t.Errorf("bad flag: exit %d\n%s", code, out)
	}
}
