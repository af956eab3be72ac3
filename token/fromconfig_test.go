package token

import (
	"os"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/config/tlstest"
)

func loadConfig(t *testing.T, env ...string) *config.Config {
	t.Helper()
	cfg, err := config.Load(config.Input{Env: env})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// Each kind of credential the configuration can name becomes that
// credential; none is an error.
func TestCredentialFromConfigKinds(t *testing.T) {
	t.Parallel()
	tc := certs(t)[0]
	path := pemFile(t, tlstest.CertPEM(tc.cert), tlstest.PKCS1PEM(tc.key))
	cred, err := CredentialFromConfig(loadConfig(t, "AZURE_CLIENT_CERTIFICATE_PATH="+path), nil)
	if err != nil || cred.Certificate == nil || !cred.Certificate.Leaf.Equal(tc.cert) {
		t.Errorf("certificate: %+v %v", cred, err)
	}
	if cred, err := CredentialFromConfig(loadConfig(t, "AZURE_CLIENT_SECRET=s3cr3t"), nil); err != nil || cred.ClientSecret.Reveal() != "s3cr3t" {
		t.Errorf("secret: %v", err)
	}
	fed := writeFile(t, "token", []byte("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"))
	if cred, err := CredentialFromConfig(loadConfig(t, "AZURE_FEDERATED_TOKEN_FILE="+fed), nil); err != nil || cred.FederatedTokenFile != fed {
		t.Errorf("federated: %+v %v", cred, err)
	}
	if _, err := CredentialFromConfig(loadConfig(t), nil); err == nil {
		t.Error("no credential accepted")
	}
	other := certs(t)[1]
	bad := pemFile(t, tlstest.CertPEM(tc.cert), tlstest.PKCS1PEM(other.key))
	if _, err := CredentialFromConfig(loadConfig(t, "AZURE_CLIENT_CERTIFICATE_PATH="+bad), nil); err == nil {
		t.Error("a key that is not the certificate's accepted")
	}
}

// A key file every user can read is warned about (the daemon's log, the
// doctor's text); 0600 and 0440 are not. Without a logger (config check)
// the warning is skipped, not a panic.
func TestKeyFilePermissions(t *testing.T) {
	t.Parallel()
	tc := certs(t)[0]
	path := pemFile(t, tlstest.CertPEM(tc.cert), tlstest.PKCS1PEM(tc.key))
	for _, m := range []struct {
		mode    os.FileMode
		exposed bool
	}{{0o600, false}, {0o440, false}, {0o644, true}, {0o604, true}} {
		if err := os.Chmod(path, m.mode); err != nil {
			t.Fatal(err)
		}
		core, logs := observer.New(zapcore.WarnLevel)
		cfg := loadConfig(t, "AZURE_CLIENT_CERTIFICATE_PATH="+path)
		if _, err := CredentialFromConfig(cfg, zap.New(core)); err != nil {
			t.Fatal(err)
		}
		mode, exposed := KeyFileExposed(path)
		if exposed != m.exposed || mode != m.mode || (logs.Len() == 1) != m.exposed {
			t.Errorf("mode %v: exposed %v (%v), %d warnings; want %v", m.mode, exposed, mode, logs.Len(), m.exposed)
		}
		if _, err := CredentialFromConfig(cfg, nil); err != nil {
			t.Fatal(err)
		}
	}
}
