package main

import (
	"bytes"
	"crypto/rsa"
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/o365relay/o365relay/relay/azuresetup"
	"github.com/o365relay/o365relay/token"
)

// cert new writes a credential the relay loads, with safe permissions,
// prints the thumbprints the portal and openssl show, and does not
// overwrite; setup azure takes the certificate it wrote.
func TestCertNewAndSetup(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pemPath, crtPath := filepath.Join(dir, "relay.pem"), filepath.Join(dir, "relay.crt")
	var out, errb bytes.Buffer
	if code := run([]string{"cert", "new", "--out", pemPath, "--cert-out", crtPath, "--bits", "3072", "--days", "730"}, &out, &errb); code != 0 {
		t.Fatalf("cert new: exit %d\n%s%s", code, out.String(), errb.String())
	}
	for path, mode := range map[string]os.FileMode{pemPath: 0o600, crtPath: 0o644} {
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v, mode %v, want %v", path, err, fi.Mode().Perm(), mode)
		}
	}
	cert, err := token.LoadCertificate(pemPath, "")
	if err != nil {
		t.Fatalf("the relay does not load the credential: %v", err)
	}
	crtData, _ := os.ReadFile(crtPath)
	c, err := azuresetup.ReadCertificate(crtData)
	if err != nil {
		t.Fatal(err)
	}
	if c.SignatureAlgorithm != x509.SHA256WithRSA || c.PublicKey.(*rsa.PublicKey).N.BitLen() != 3072 {
		t.Errorf("signature %v, key %d bits", c.SignatureAlgorithm, c.PublicKey.(*rsa.PublicKey).N.BitLen())
	}
	if d := c.NotAfter.Sub(c.NotBefore).Hours() / 24; d < 729 || d > 731 {
		t.Errorf("lifetime %.1f days", d)
	}
	_ = cert
	sha1, sha256 := azuresetup.Thumbprints(c)
	if !strings.Contains(out.String(), sha1) || !strings.Contains(out.String(), sha256) || !strings.Contains(out.String(), "Upload") {
		t.Errorf("output lacks the thumbprints or the upload hint:\n%s", out.String())
	}
	// openssl, where installed, agrees on the portal's thumbprint.
	if _, err := exec.LookPath("openssl"); err == nil {
		o, err := exec.Command("openssl", "x509", "-in", crtPath, "-noout", "-fingerprint", "-sha1").Output()
		if err != nil || strings.ReplaceAll(strings.TrimSpace(strings.SplitN(string(o), "=", 2)[1]), ":", "") != sha1 {
			t.Errorf("openssl says %q (%v), we say %s", o, err, sha1)
		}
	}
	// No overwrite without --force.
	out.Reset()
	errb.Reset()
	if code := run([]string{"cert", "new", "--out", pemPath, "--cert-out", filepath.Join(dir, "x.crt")}, &out, &errb); code == 0 || !strings.Contains(errb.String(), "exists") {
		t.Errorf("overwrote %s: exit %d %s", pemPath, code, errb.String())
	}
	for _, bad := range [][]string{{"cert", "new", "--bits", "1024", "--out", filepath.Join(dir, "a"), "--cert-out", filepath.Join(dir, "b")}, {"cert", "new", "--days", "0", "--out", filepath.Join(dir, "c"), "--cert-out", filepath.Join(dir, "d")}, {"cert"}} {
		if code := run(bad, &out, &errb); code != 2 {
			t.Errorf("%v: exit %d", bad, code)
		}
	}
	// setup azure embeds that certificate.
	out.Reset()
	errb.Reset()
	if code := run([]string{"setup", "azure", "--tenant", "contoso.onmicrosoft.com", "--mailbox", "relay@contoso.com,alerts@contoso.com", "--certificate", crtPath}, &out, &errb); code != 0 {
		t.Fatalf("setup azure: exit %d\n%s", code, errb.String())
	}
	if !strings.Contains(out.String(), "$CertThumbprint = '"+sha1+"'") || !strings.Contains(out.String(), "@('relay@contoso.com', 'alerts@contoso.com')") {
		t.Errorf("script lacks the thumbprint or the mailboxes:\n%s", out.String()[:1500])
	}
	if code := run([]string{"setup", "azure", "--mailbox", "relay@contoso.com"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "--tenant") {
		t.Errorf("setup azure without --tenant: exit %d %s", code, errb.String())
	}
}
