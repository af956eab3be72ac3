package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/config/tlstest"
)

// config check says what serve would log about a world-readable key file
// (as a warning on stderr; the check still passes), and nothing when the
// file is private.
func TestConfigCheckWarnsAboutKeyPermissions(t *testing.T) {
	t.Parallel()
	crt, key, err := tlstest.SelfSigned("o365relay test", time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "app.pem")
	if err := os.WriteFile(path, append(tlstest.CertPEM(crt), tlstest.PKCS1PEM(key)...), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"AZURE_TENANT_ID=contoso.example", "AZURE_CLIENT_ID=4a1f6c0e-0000-0000-0000-000000000000",
		"O365RELAY_MAILBOX=relay@contoso.example", "AZURE_CLIENT_CERTIFICATE_PATH=" + path}
	check := func() (int, string) {
		cfg, err := config.Load(config.Input{Env: env})
		if err != nil {
			t.Fatal(err)
		}
		var stdout, stderr bytes.Buffer
		return checkConfig(&stdout, &stderr, cfg), stderr.String()
	}
	if code, errOut := check(); code != 0 || errOut != "" {
		t.Errorf("private key file: exit %d, stderr %q", code, errOut)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	code, errOut := check()
	if code != 0 || !strings.Contains(errOut, "warning: the private key file "+path+" is world-readable (mode -rw-r--r--); chmod 600 it") {
		t.Errorf("world-readable key file: exit %d, stderr %q", code, errOut)
	}
}
