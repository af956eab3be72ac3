package token

import (
	"strings"
	"testing"

	"github.com/o365relay/o365relay/config"
)

// The token package keeps no defaults of its own for what is a setting
// (scope, authority host, assertion algorithm): config has them, and a
// caller that passes none gets an error naming the setting instead of a
// second, possibly different, default.
func TestNewSourceTakesSettingsFromConfig(t *testing.T) {
	t.Parallel()
	cert := certCredential(t)
	app := Options{TenantID: "t", ClientID: "c", AuthorityHost: config.DefaultAuthorityHost, Scope: config.DefaultScope, Credential: cert}
	if s, err := NewSource(app); err != nil {
		t.Fatalf("complete options refused: %v", err)
	} else if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		setting string
		mod     func(*Options)
	}{
		{"scope", func(o *Options) { o.Scope = "" }},
		{"authority_host", func(o *Options) { o.AuthorityHost = "" }},
		{"assertion_algorithm", func(o *Options) { o.Credential.Algorithm = "" }},
	} {
		o := app
		tc.mod(&o)
		_, err := NewSource(o)
		if err == nil || !strings.Contains(err.Error(), tc.setting) {
			t.Errorf("without %s: %v, want an error naming the setting", tc.setting, err)
		}
	}
}

func certCredential(t *testing.T) Credential {
	t.Helper()
	tc := certs(t)[0]
	c, err := NewCertificate(tc.cert, nil, tc.key)
	if err != nil {
		t.Fatal(err)
	}
	return Credential{Certificate: c, Algorithm: PS256}
}
