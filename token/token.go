// Package token owns the OAuth2 access token the relay presents to Exchange
// Online: the credential that proves the app's identity to Entra ID (a
// certificate-signed client assertion, a client secret, or a Kubernetes
// federated token), the token request, its cache and its refresh.
//
// token sits between config and the relay: it imports config (the
// credential a configuration names, CredentialFromConfig) and nothing under
// relay/, and knows nothing of SMTP. A failure is an *EntraError; the
// Exchange client turns it into the reply a waiting message gets
// (docs/architecture.md).
package token

import (
	"context"
	"time"

	"github.com/o365relay/o365relay/config/secret"
)

// Token is an access token for the Exchange Online SMTP scope.
type Token struct {
	// Value is the bearer token. It is a secret.Secret so that it cannot be
	// logged by accident.
	Value secret.Secret
	// ExpiresOn is when Entra ID said the token stops being valid.
	ExpiresOn time.Time
}

// Source hands out access tokens. Implementations are safe for concurrent
// use; in steady state Token returns a cached value without a network call.
type Source interface {
	// Token returns a token valid for at least a little while longer.
	Token(ctx context.Context) (Token, error)
	// Refresh is called when Exchange rejected tok (535 5.7.3): it returns a
	// token different from tok, fetched from Entra ID, unless another caller
	// already replaced tok, in which case that newer token is returned. It
	// never makes more than one request for many concurrent callers.
	Refresh(ctx context.Context, rejected Token) (Token, error)
}
