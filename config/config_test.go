package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "relay.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaults(t *testing.T) {
	c, err := Load(Input{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:2525" || c.Upstream != "smtp.office365.com:587" ||
		c.Scope != "https://outlook.office365.com/.default" || c.Ack != "spool" ||
		c.AdminListen != "127.0.0.1:9025" || c.MaxMessageBytes != 35<<20 || c.MaxRecipients != 500 ||
		c.QueueLifetime != 120*time.Hour || c.ShutdownTimeout != 30*time.Second || c.MailboxConnections != 3 ||
		c.AssertionAlgorithm != "PS256" || c.AuthorityHost != "https://login.microsoftonline.com/" {
		t.Errorf("defaults: %+v", c)
	}
	want := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	if len(c.AllowedNetworks) != 2 || c.AllowedNetworks[0] != want[0] || c.AllowedNetworks[1] != want[1] {
		t.Errorf("allowed networks %v", c.AllowedNetworks)
	}
	if c.Hostname == "" {
		t.Error("hostname default empty")
	}
	// Every default is documented as it parses.
	for _, s := range Settings() {
		if s.Doc == "" || s.Env == "" || s.Key == "" {
			t.Errorf("setting %+v is not documented", s.Key)
		}
	}
}

func TestPrecedence(t *testing.T) {
	f := writeFile(t, "listen: 127.0.0.1:1001\nmailbox: file@example.com\nupstream: file.example:587\nack: upstream\n")
	c, err := Load(Input{
		File:  f,
		Env:   []string{"O365RELAY_LISTEN=127.0.0.1:1002", "O365RELAY_MAILBOX=env@example.com"},
		Flags: map[string]string{"listen": "127.0.0.1:1003"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:1003" || c.Sources["listen"] != FromFlag {
		t.Errorf("listen %s from %s, want the flag", c.Listen, c.Sources["listen"])
	}
	if c.Mailbox != "env@example.com" || c.Sources["mailbox"] != FromEnv {
		t.Errorf("mailbox %s from %s, want the environment", c.Mailbox, c.Sources["mailbox"])
	}
	if c.Upstream != "file.example:587" || c.Ack != "upstream" || c.Sources["upstream"] != FromFile {
		t.Errorf("file values lost: %s %s", c.Upstream, c.Ack)
	}
	if c.Sources["scope"] != FromDefault {
		t.Errorf("scope from %s", c.Sources["scope"])
	}
}

// Each bad input names where it was set and what to do.
func TestErrorsNameTheSetting(t *testing.T) {
	cases := []struct {
		name  string
		file  string
		env   []string
		flags map[string]string
		want  []string
	}{
		{"file typo", "lsten: 127.0.0.1:25\n", nil, nil, []string{"relay.yaml:1 lsten", "unknown key", "did you mean listen?"}},
		{"env typo", "", []string{"O365RELAY_LISTN=1"}, nil, []string{"O365RELAY_LISTN", "not a setting", "did you mean O365RELAY_LISTEN?"}},
		{"host bits", "", []string{"O365RELAY_ALLOWED_NETWORKS=10.0.0.1/8"}, nil, []string{"O365RELAY_ALLOWED_NETWORKS", "host bits", "10.0.0.0/8"}},
		{"not a cidr", "allowed_networks: [127.0.0.0/8, nonsense]\n", nil, nil, []string{"allowed_networks", "\"nonsense\" is not a CIDR"}},
		{"bad listen", "", nil, map[string]string{"listen": "2525"}, []string{"--listen", "not host:port"}},
		{"bad duration", "shutdown_timeout: soon\n", nil, nil, []string{"shutdown_timeout", "not a duration"}},
		{"bad ack", "", []string{"O365RELAY_ACK=later"}, nil, []string{"O365RELAY_ACK", "not one of spool, upstream"}},
		{"wide open", "", []string{"O365RELAY_LISTEN=0.0.0.0:2525"}, nil, []string{"O365RELAY_LISTEN", "not a loopback address", "allowed_networks"}},
		{"common tenant", "", []string{"AZURE_TENANT_ID=common"}, nil, []string{"AZURE_TENANT_ID", "Directory (tenant) ID"}},
		{"scope", "", []string{"O365RELAY_SCOPE=https://graph.microsoft.com"}, nil, []string{"O365RELAY_SCOPE", "/.default"}},
		{"authority http", "", []string{"AZURE_AUTHORITY_HOST=http://login.example/"}, nil, []string{"AZURE_AUTHORITY_HOST", "https URL"}},
		{"missing cert file", "", []string{"AZURE_CLIENT_CERTIFICATE_PATH=/nonexistent/relay.pem"}, nil, []string{"AZURE_CLIENT_CERTIFICATE_PATH", "cannot read /nonexistent/relay.pem"}},
		{"two credentials", "", []string{"AZURE_CLIENT_SECRET=s", "AZURE_FEDERATED_TOKEN_FILE=/dev/null"}, nil, []string{"more than one credential", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE"}},
		{"password without cert", "", []string{"AZURE_CLIENT_CERTIFICATE_PASSWORD=x"}, nil, []string{"AZURE_CLIENT_CERTIFICATE_PASSWORD", "client_certificate_path"}},
		{"nested", "listen:\n  host: x\n", nil, nil, []string{"relay.yaml:1 listen", "expected a single value, found a mapping"}},
		{"duplicate", "listen: 127.0.0.1:1\nlisten: 127.0.0.1:2\n", nil, nil, []string{"relay.yaml:2 listen", "set twice (first on line 1)"}},
		{"not a mapping", "- listen\n", nil, nil, []string{"expected a mapping"}},
		{"mailbox", "mailbox: <noreply@example.com>\n", nil, nil, []string{"mailbox", "bare address"}},
		{"mailbox not RFC 5321", "mailbox: no..reply@example.com\n", nil, nil, []string{"mailbox", "not an RFC 5321 address"}},
		{"zero size", "max_message_bytes: 0\n", nil, nil, []string{"max_message_bytes", "more than 0"}},
		{"yaml syntax", "listen: [\n", nil, nil, []string{"relay.yaml"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := Input{Env: tc.env, Flags: tc.flags}
			if tc.file != "" {
				in.File = writeFile(t, tc.file)
			}
			_, err := Load(in)
			if err == nil {
				t.Fatal("Load succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestAllErrorsAtOnce(t *testing.T) {
	_, err := Load(Input{Env: []string{"O365RELAY_ACK=x", "O365RELAY_LOG_LEVEL=loud"}})
	var n int
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		var ce *Error
		if errors.As(e, &ce) {
			n++
		}
	}
	if n != 2 {
		t.Errorf("got %d setting errors in %q, want 2", n, err)
	}
}

func TestServiceLinksAreWarnings(t *testing.T) {
	c, err := Load(Input{Env: []string{"O365RELAY_PORT=tcp://10.0.0.1:25", "O365RELAY_SERVICE_HOST=10.0.0.1", "O365RELAY_PORT_25_TCP_ADDR=10.0.0.1", "AZURE_USERNAME=ignored"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Warnings) != 3 || !strings.Contains(c.Warnings[0], "enableServiceLinks") {
		t.Errorf("warnings %q", c.Warnings)
	}
}

func TestEmptyAllowedNetworksDeniesAll(t *testing.T) {
	c, err := Load(Input{Env: []string{"O365RELAY_ALLOWED_NETWORKS="}})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.AllowedNetworks) != 0 || len(c.Warnings) != 1 {
		t.Errorf("networks %v warnings %q", c.AllowedNetworks, c.Warnings)
	}
	// An explicit list makes a wide listener acceptable.
	c, err = Load(Input{Env: []string{"O365RELAY_LISTEN=0.0.0.0:2525", "O365RELAY_ALLOWED_NETWORKS=10.244.0.0/16, 192.0.2.7"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := formatPrefixes(c.AllowedNetworks); got != "10.244.0.0/16,192.0.2.7/32" {
		t.Errorf("networks %s", got)
	}
}

func TestSizes(t *testing.T) {
	for in, want := range map[string]int64{"1000": 1000, "35MB": 35e6, "35MiB": 35 << 20, "64 KiB": 64 << 10, "2GB": 2e9} {
		got, err := parseBytes(in)
		if err != nil || got != want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"-1", "MB", "1.5MB", "99999999999999999999"} {
		if _, err := parseBytes(in); err == nil {
			t.Errorf("parseBytes(%q) accepted", in)
		}
	}
}

func TestCheckDaemon(t *testing.T) {
	c, err := Load(Input{})
	if err != nil {
		t.Fatal(err)
	}
	err = c.CheckDaemon()
	for _, w := range []string{"AZURE_TENANT_ID", "AZURE_CLIENT_ID", "O365RELAY_MAILBOX", "AZURE_CLIENT_CERTIFICATE_PATH"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("CheckDaemon error %v does not name %s", err, w)
		}
	}
	c, err = Load(Input{Env: []string{"AZURE_TENANT_ID=t", "AZURE_CLIENT_ID=c", "O365RELAY_MAILBOX=m@example.com", "AZURE_CLIENT_SECRET=s"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CheckDaemon(); err != nil || c.Credential() != "secret" {
		t.Errorf("CheckDaemon %v credential %q", err, c.Credential())
	}
}

func TestEffectiveRedactsSecrets(t *testing.T) {
	c, err := Load(Input{Env: []string{"AZURE_CLIENT_SECRET=hunter2-very-secret"}})
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range c.Effective() {
		if strings.Contains(v, "hunter2") {
			t.Errorf("%s = %s", k, v)
		}
	}
	if c.Effective()["client_secret"] != "[REDACTED] (environment)" {
		t.Errorf("client_secret shown as %q", c.Effective()["client_secret"])
	}
}

// The README's reference table is generated from Settings; this keeps them
// from drifting. Regenerate with: UPDATE_README=1 go test ./config -run TestReadmeReference
func TestReadmeReference(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?s)<!-- BEGIN CONFIG REFERENCE.*?-->\n(.*?)<!-- END CONFIG REFERENCE -->`)
	m := re.FindSubmatchIndex(readme)
	if m == nil {
		t.Fatal("README.md has no <!-- BEGIN CONFIG REFERENCE --> ... <!-- END CONFIG REFERENCE --> section")
	}
	got := string(readme[m[2]:m[3]])
	want := Reference()
	if got != want {
		if os.Getenv("UPDATE_README") != "" {
			out := string(readme[:m[2]]) + want + string(readme[m[3]:])
			if err := os.WriteFile("../README.md", []byte(out), 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		t.Errorf("README.md configuration reference is stale; run UPDATE_README=1 go test ./config -run TestReadmeReference")
	}
}

func FuzzLoadFile(f *testing.F) {
	f.Add([]byte("listen: 127.0.0.1:2525\nallowed_networks: [10.0.0.0/8]\n"))
	f.Add([]byte("mailbox: a@b\nmax_message_bytes: 35MB\n"))
	f.Add([]byte("- x\n"))
	f.Add([]byte("a: &x 1\nb: *x\n"))
	f.Add([]byte("listen: [\n"))
	f.Add([]byte("senders:\n  - sender: \"*@a.example\"\n    mailbox: m@b.example\n    rewrite: envelope+from\n  - sender: \"*\"\n"))
	f.Add([]byte("mailboxes:\n  m@b.example: {connections: 2, rate: 0, daily_recipients: 5}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 4096 {
			return
		}
		vals, _, err := parseYAML("fuzz.yaml", data)
		if err != nil {
			return
		}
		c := &Config{Sources: map[string]Source{}}
		for _, v := range vals {
			// Parsers must reject or accept, never panic.
			_ = v.setting.set(c, v.value)
		}
	})
}

// The systemd environment-file example documents every setting, commented
// out with its default.
func TestEnvExampleDocumentsEverySetting(t *testing.T) {
	src, err := os.ReadFile("../deploy/systemd/o365relay.env.example")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range Settings() {
		if !regexp.MustCompile(`(?m)^#` + s.Env + `=`).Match(src) {
			t.Errorf("deploy/systemd/o365relay.env.example lacks #%s=", s.Env)
		}
	}
}
