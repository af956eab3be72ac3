package token

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/confidential"
	"github.com/o365relay/o365relay/config/secret"
)

// Credential is how the app proves its identity. Set exactly one of
// Certificate, ClientSecret, FederatedTokenFile and ManagedIdentity.
type Credential struct {
	// Certificate signs a client assertion (docs/entra.md#client-assertion).
	Certificate *Certificate
	Algorithm   Algorithm // PS256 or RS256 (config's assertion_algorithm)
	SendX5C     bool      // send the chain (subject name + issuer auth)

	// ClientSecret is a client secret value.
	ClientSecret secret.Secret

	// FederatedTokenFile is a workload-identity token file
	// (AZURE_FEDERATED_TOKEN_FILE, docs/entra.md#workload-identity). It is re-read for
	// every token request because the kubelet rotates it.
	FederatedTokenFile string

	// ManagedIdentity gets tokens from the platform's managed-identity
	// endpoint instead of Entra ID's token endpoint (managedidentity.go).
	ManagedIdentity *ManagedIdentity
}

func (c Credential) kind() (string, error) {
	n := 0
	kind := ""
	if c.Certificate != nil {
		n, kind = n+1, "certificate"
	}
	if !c.ClientSecret.IsZero() {
		n, kind = n+1, "client secret"
	}
	if c.FederatedTokenFile != "" {
		n, kind = n+1, "federated token file"
	}
	if c.ManagedIdentity != nil {
		n, kind = n+1, "managed identity"
	}
	if n != 1 {
		return "", fmt.Errorf("token: set exactly one credential (certificate, client secret, federated token file or managed identity), %d set", n)
	}
	return kind, nil
}

func (s *EntraSource) certAssertion(_ context.Context, o confidential.AssertionRequestOptions) (string, error) {
	s.mu.Lock()
	c := s.cert
	s.mu.Unlock()
	return s.assertionWith(c, o)
}

func (s *EntraSource) assertionWith(c *Certificate, o confidential.AssertionRequestOptions) (string, error) {
	a, err := c.Assertion(AssertionParams{
		ClientID:  o.ClientID,
		Audience:  o.TokenEndpoint,
		Algorithm: s.cred.Algorithm,
		X5C:       s.cred.SendX5C,
		Now:       s.clock(),
	})
	return a.Reveal(), err
}

// maxFederatedToken bounds the token file read; SA tokens are ~1–2 KiB.
const maxFederatedToken = 64 << 10

func (s *EntraSource) federatedAssertion(context.Context, confidential.AssertionRequestOptions) (string, error) {
	path := s.cred.FederatedTokenFile
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("token: federated token file: %w", err)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxFederatedToken+1))
	if cerr := f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("token: federated token file %s: %w", path, err)
	}
	if len(b) > maxFederatedToken {
		return "", fmt.Errorf("token: federated token file %s is larger than %d bytes", path, maxFederatedToken)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("token: federated token file %s is empty", path)
	}
	return tok, nil
}
