package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/config/tlstest"
)

// config check fails with exit 2 and exactly the text serve prints for the
// same configuration, and passes (exit 0) for one serve would start with.
func TestE2EConfigCheckMatchesServe(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bad := writeFile(t, dir, "bad.yaml", []byte("listen: 0.0.0.0:2525\nretry_min: 1h\nretry_max: 1m\nlog_format: xml\n"))
	for _, tc := range []struct {
		env  []string
		args []string
	}{
		{nil, []string{"--config", bad}},
		{[]string{"O365RELAY_LISTN=127.0.0.1:2525"}, nil},
		{nil, nil}, // nothing set: what the daemon needs is missing
	} {
		serveOut, serveCode := runToolEnv(t, tc.env, binPath, append([]string{"serve"}, tc.args...)...)
		checkOut, checkCode := runToolEnv(t, tc.env, binPath, append([]string{"config", "check"}, tc.args...)...)
		if serveCode != 2 || checkCode != 2 {
			t.Errorf("%v %v: serve exit %d, config check exit %d, want 2 and 2", tc.env, tc.args, serveCode, checkCode)
		}
		if serveOut != checkOut {
			t.Errorf("%v %v: config check and serve say different things:\nserve:\n%s\nconfig check:\n%s", tc.env, tc.args, serveOut, checkOut)
		}
	}
	// A configuration serve would start with.
	crt, key, err := tlstest.SelfSigned("o365relay test", time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	certPath := writeFile(t, dir, "app.pem", append(tlstest.CertPEM(crt), tlstest.PKCS1PEM(key)...))
	good := writeFile(t, dir, "good.yaml", []byte("tenant_id: contoso.example\nclient_id: 4a1f6c0e-0000-0000-0000-000000000000\nmailbox: relay@contoso.example\nclient_certificate_path: "+certPath+"\n"))
	out, code := runToolEnv(t, nil, binPath, "config", "check", good)
	if code != 0 || !strings.Contains(out, "configuration OK: certificate credential, mailbox relay@contoso.example") {
		t.Errorf("config check of a good file: exit %d\n%s", code, out)
	}
	// The same settings as a systemd EnvironmentFile.
	envFile := writeFile(t, dir, "o365relay.env", []byte("# comment\nAZURE_TENANT_ID=contoso.example\nAZURE_CLIENT_ID=\"4a1f6c0e-0000-0000-0000-000000000000\"\n\nO365RELAY_MAILBOX=relay@contoso.example\nAZURE_CLIENT_CERTIFICATE_PATH="+certPath+"\n"))
	if out, code := runToolEnv(t, nil, binPath, "config", "check", envFile); code != 0 {
		t.Errorf("config check of an env file: exit %d\n%s", code, out)
	}
	// --env-file works for every command that reads the configuration.
	if out, code := runToolEnv(t, nil, binPath, "config", "check", "--env-file", envFile); code != 0 {
		t.Errorf("config check --env-file: exit %d\n%s", code, out)
	}
	if out, code := runToolEnv(t, nil, binPath, "config", "show", "--env-file", envFile, "--json"); code != 0 || !strings.Contains(out, `"where": "O365RELAY_MAILBOX"`) {
		t.Errorf("config show --env-file: exit %d\n%s", code, out)
	}
	if out, code := runToolEnv(t, nil, binPath, "serve", "--env-file", filepath.Join(dir, "missing.env")); code != 2 || !strings.Contains(out, "missing.env") {
		t.Errorf("serve with a missing --env-file: exit %d\n%s", code, out)
	}
	// A certificate that does not load: serve's exit 1.
	junk := writeFile(t, dir, "junk.pem", []byte("not a certificate"))
	if out, code := runToolEnv(t, []string{"AZURE_CLIENT_CERTIFICATE_PATH=" + junk}, binPath, "config", "check", "--config", good); code != 1 || !strings.Contains(out, "client_certificate_path") {
		t.Errorf("config check with a junk certificate: exit %d\n%s", code, out)
	}
}

// config show prints every setting with its source, secrets redacted.
func TestE2EConfigShow(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := writeFile(t, dir, "relay.yaml", []byte("mailbox: relay@contoso.example\nmax_recipients: 50\nsenders:\n  - sender: \"*@app.example\"\n    mailbox: apps@contoso.example\n"))
	env := []string{"AZURE_CLIENT_SECRET=hunter2-very-secret", "O365RELAY_LOG_LEVEL=debug"}
	out, code := runToolEnv(t, env, binPath, "config", "show", "--config", file, "--json", "--listen", "127.0.0.1:2526")
	if code != 0 {
		t.Fatalf("config show: exit %d\n%s", code, out)
	}
	if strings.Contains(out, "hunter2") {
		t.Fatalf("config show prints the secret:\n%s", out)
	}
	var rows []config.Shown
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	got := map[string]config.Shown{}
	for _, r := range rows {
		got[r.Key] = r
	}
	for key, want := range map[string]config.Shown{
		"listen":         {Key: "listen", Value: "127.0.0.1:2526", Source: config.FromFlag, Where: "--listen"},
		"log_level":      {Key: "log_level", Value: "debug", Source: config.FromEnv, Where: "O365RELAY_LOG_LEVEL"},
		"mailbox":        {Key: "mailbox", Value: "relay@contoso.example", Source: config.FromFile, Where: file},
		"max_recipients": {Key: "max_recipients", Value: "50", Source: config.FromFile, Where: file},
		"client_secret":  {Key: "client_secret", Value: "[REDACTED]", Source: config.FromEnv, Where: "AZURE_CLIENT_SECRET"},
		"retry_min":      {Key: "retry_min", Value: "1m0s", Source: config.FromDefault},
	} {
		if got[key] != want {
			t.Errorf("%s: got %+v, want %+v", key, got[key], want)
		}
	}
	if len(rows) != len(config.Settings())+1 || !strings.Contains(got["senders"].Value, "*@app.example") {
		t.Errorf("%d rows; senders %+v", len(rows), got["senders"])
	}
	// The table form names the source of each value.
	out, code = runToolEnv(t, env, binPath, "config", "show", "--config", file)
	if code != 0 || !strings.Contains(out, "file ("+file+")") || !strings.Contains(out, "environment (O365RELAY_LOG_LEVEL)") {
		t.Errorf("config show table: exit %d\n%s", code, out)
	}
}

// A secret given as a flag is refused before anything runs, and the value
// is not echoed; the environment variable is named as the fix.
func TestSecretFlagRefused(t *testing.T) {
	t.Parallel()
	for _, cmd := range []string{"serve", "doctor", "token", "send", "config"} {
		args := []string{cmd, "--client-secret", "hunter2-very-secret"}
		if cmd == "config" {
			args = append(args, "show")
		}
		var out, errb bytes.Buffer
		code := run(args, &out, &errb)
		if code != 2 || !strings.Contains(errb.String(), "AZURE_CLIENT_SECRET") || strings.Contains(errb.String()+out.String(), "hunter2") {
			t.Errorf("%v: exit %d\nstdout:\n%s\nstderr:\n%s", args, code, out.String(), errb.String())
		}
	}
}

// A start-up error is said once (it was logged and printed).
func TestE2EStartupErrorOnce(t *testing.T) {
	t.Parallel()
	out, code := runToolEnv(t, nil, binPath, "serve", "--spool-dir", t.TempDir())
	if code != 2 || strings.Count(out, "Directory (tenant) ID") != 1 {
		t.Errorf("exit %d; the missing tenant is reported %d times:\n%s", code, strings.Count(out, "Directory (tenant) ID"), out)
	}
}

// config schema and config example print the shipped files.
func TestConfigSchemaAndExampleCommands(t *testing.T) {
	t.Parallel()
	for sub, file := range map[string]string{"schema": "o365relay.schema.json", "example": "o365relay.example.yaml"} {
		want, err := os.ReadFile(filepath.Join("..", "..", "deploy", "config", file))
		if err != nil {
			t.Fatal(err)
		}
		var out, errb bytes.Buffer
		if code := run([]string{"config", sub}, &out, &errb); code != 0 || !bytes.Equal(out.Bytes(), want) {
			t.Errorf("config %s: exit %d, output differs from deploy/config/%s", sub, code, file)
		}
	}
}
