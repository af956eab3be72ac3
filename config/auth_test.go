package config

import (
	"crypto/rsa"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/o365relay/o365relay/config/tlstest"
)

// listenerPair writes a server certificate (with its chain) and key from a
// fresh test CA, and a second key that belongs to another certificate.
func listenerPair(t *testing.T) (cert, key, otherKey string) {
	t.Helper()
	dir := t.TempDir()
	ca, err := tlstest.NewCA("config test CA")
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string) (string, string) {
		c, err := ca.ServerCert("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		var chain []byte
		for _, der := range c.Certificate {
			chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
		}
		cp, kp := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
		if err := os.WriteFile(cp, chain, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(kp, tlstest.PKCS1PEM(c.PrivateKey.(*rsa.PrivateKey)), 0o600); err != nil {
			t.Fatal(err)
		}
		return cp, kp
	}
	cert, key = write("listener")
	_, otherKey = write("other")
	return cert, key, otherKey
}

func bcryptHash(t *testing.T, pw string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func TestListenerTLSAndAuthErrors(t *testing.T) {
	t.Parallel()
	cert, key, otherKey := listenerPair(t)
	hash := bcryptHash(t, "app-password-1")
	users := "auth_users:\n  - user: app\n    password_bcrypt: \"" + hash + "\"\n    senders: [app@contoso.com, \"*@apps.contoso.com\"]\n"
	tlsEnv := []string{"O365RELAY_LISTEN_TLS_CERT=" + cert, "O365RELAY_LISTEN_TLS_KEY=" + key}
	for _, tc := range []struct {
		name string
		file string
		env  []string
		want []string
	}{
		{"auth without TLS", users, nil, []string{"auth_users", "only over TLS", "listen_tls_cert"}},
		{"key of another certificate", "", []string{"O365RELAY_LISTEN_TLS_CERT=" + cert, "O365RELAY_LISTEN_TLS_KEY=" + otherKey},
			[]string{"O365RELAY_LISTEN_TLS_KEY", "does not go with listen_tls_cert", "private key"}},
		{"key is the certificate", "", []string{"O365RELAY_LISTEN_TLS_CERT=" + cert, "O365RELAY_LISTEN_TLS_KEY=" + cert},
			[]string{"O365RELAY_LISTEN_TLS_KEY", "does not go with"}},
		{"certificate is the key", "", []string{"O365RELAY_LISTEN_TLS_CERT=" + key, "O365RELAY_LISTEN_TLS_KEY=" + key},
			[]string{"O365RELAY_LISTEN_TLS_CERT", "no PEM CERTIFICATE"}},
		{"cert without key", "", []string{"O365RELAY_LISTEN_TLS_CERT=" + cert}, []string{"listen_tls_key", "is not set"}},
		{"implicit TLS without cert", "", []string{"O365RELAY_LISTEN_TLS=127.0.0.1:4650"}, []string{"O365RELAY_LISTEN_TLS", "needs a certificate"}},
		{"bad hash", "auth_users:\n  - user: app\n    password_bcrypt: \"plain-text-pw\"\n    senders: [\"*\"]\n", tlsEnv,
			[]string{"relay.yaml:3 auth_users", "not a bcrypt hash", "htpasswd"}},
		{"no senders", "auth_users:\n  - user: app\n    password_bcrypt: \"" + hash + "\"\n", tlsEnv, []string{"relay.yaml:2 auth_users", "no senders"}},
		{"bad sender", "auth_users:\n  - user: app\n    password_bcrypt: \"" + hash + "\"\n    senders: [\"app@*\"]\n", tlsEnv, []string{"auth_users", "app@*"}},
		{"duplicate user", users + "  - user: app\n    password_bcrypt: \"" + hash + "\"\n    senders: [\"*\"]\n", tlsEnv, []string{"auth_users", "already on line 2"}},
		{"unknown field", "auth_users:\n  - user: app\n    password: x\n", tlsEnv, []string{"unknown field \"password\""}},
		{"wide open, TLS but no AUTH", "", append([]string{"O365RELAY_LISTEN=0.0.0.0:2525"}, tlsEnv...),
			[]string{"O365RELAY_LISTEN", "not a loopback address", "allowed_networks", "auth_users"}},
		{"implicit TLS port wide open", "", append([]string{"O365RELAY_LISTEN_TLS=0.0.0.0:4650"}, tlsEnv...),
			[]string{"O365RELAY_LISTEN_TLS", "not a loopback address"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			in := Input{Env: tc.env}
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
			if strings.Contains(err.Error(), hash) || strings.Contains(err.Error(), "plain-text-pw") {
				t.Fatalf("error %q shows the hash", err)
			}
		})
	}
}

func TestListenerTLSAndAuthAccepted(t *testing.T) {
	t.Parallel()
	cert, key, _ := listenerPair(t)
	hash := bcryptHash(t, "app-password-1")
	file := writeFile(t, "auth_users:\n  - user: app\n    password_bcrypt: \""+hash+"\"\n    senders: [App@Contoso.com, \"*@apps.contoso.com\"]\n  - user: any\n    password_bcrypt: \""+hash+"\"\n    senders: \"*\"\n")
	// Beyond loopback, protected by TLS and AUTH, allowed_networks left
	// at its default: clients must authenticate.
	c, err := Load(Input{File: file, Env: []string{"O365RELAY_LISTEN=0.0.0.0:2525", "O365RELAY_LISTEN_TLS=0.0.0.0:4650",
		"O365RELAY_LISTEN_TLS_CERT=" + cert, "O365RELAY_LISTEN_TLS_KEY=" + key}})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.AuthUsers) != 2 || c.AuthUsers[0].User != "app" || strings.Join(c.AuthUsers[0].Senders, ",") != "app@contoso.com,*@apps.contoso.com" ||
		c.AuthUsers[0].PasswordBcrypt.Reveal() != hash || strings.Join(c.AuthUsers[1].Senders, ",") != "*" {
		t.Fatalf("users %+v", c.AuthUsers)
	}
	eff := c.Effective()
	if got := eff["auth_users"]; !strings.Contains(got, "app→app@contoso.com+*@apps.contoso.com") {
		t.Fatalf("Effective auth_users %q", got)
	}
	for k, v := range eff {
		if strings.Contains(v, hash) || strings.Contains(v, "$2a$") {
			t.Fatalf("Effective[%s] shows a hash: %q", k, v)
		}
	}
	var warned bool
	for _, w := range c.Warnings {
		warned = warned || strings.Contains(w, "bcrypt cost 4")
		if strings.Contains(w, "every client connection will be refused") {
			t.Fatalf("warning %q: with auth_users an empty allowed_networks means AUTH for all", w)
		}
	}
	if !warned {
		t.Fatalf("no warning about the cheap hash: %q", c.Warnings)
	}
	// An empty allowed_networks with AUTH: every client authenticates,
	// nobody is refused at connect, so no warning.
	c, err = Load(Input{File: file, Env: []string{"O365RELAY_ALLOWED_NETWORKS=", "O365RELAY_LISTEN_TLS_CERT=" + cert, "O365RELAY_LISTEN_TLS_KEY=" + key}})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.AllowedNetworks) != 0 {
		t.Fatalf("allowed_networks %v", c.AllowedNetworks)
	}
}
