package token

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/cache"
	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/confidential"
)

// microsoftHosts are Entra ID's public and sovereign-cloud hosts (MSAL's
// aadTrustedHostList, authority.go). Only for these is MSAL's instance
// discovery left on; it then queries the same host. For any other host it
// would query login.microsoftonline.com (docs/entra.md#endpoint-discovery), which a
// private or test authority must never cause.
var microsoftHosts = map[string]bool{
	"login.microsoftonline.com":        true,
	"login.microsoft.com":              true,
	"login.windows.net":                true,
	"sts.windows.net":                  true,
	"login.microsoftonline.us":         true,
	"login-us.microsoftonline.com":     true,
	"login.usgovcloudapi.net":          true,
	"login.partner.microsoftonline.cn": true,
	"login.chinacloudapi.cn":           true,
	"login.microsoftonline.de":         true,
}

// emptyCache is the MSAL cache accessor that makes MSAL forget every token:
// see the EntraSource doc comment.
type emptyCache struct{}

func (emptyCache) Replace(_ context.Context, u cache.Unmarshaler, _ cache.ReplaceHints) error {
	return u.Unmarshal([]byte("{}"))
}

func (emptyCache) Export(context.Context, cache.Marshaler, cache.ExportHints) error { return nil }

// initApp makes s get its tokens from Entra ID's token endpoint as the app
// registration opts names, with MSAL's confidential client.
func (s *EntraSource) initApp(opts Options) error {
	if opts.ClientID == "" || opts.TenantID == "" {
		return errors.New("token: client ID and tenant ID are required")
	}
	switch strings.ToLower(opts.TenantID) {
	case "common", "consumers", "organizations":
		// AADSTS9001023: client credentials need a specific tenant.
		return fmt.Errorf("token: tenant %q cannot be used with client credentials; use the Directory (tenant) ID", opts.TenantID)
	}
	host := opts.AuthorityHost
	if host == "" {
		return errors.New("token: authority host is required (config's authority_host setting)")
	}
	hu, err := url.Parse(host)
	if err != nil || hu.Scheme != "https" || hu.Host == "" {
		// MSAL requires https (authority.go NewInfoFromAuthorityURI).
		return fmt.Errorf("token: authority host %q must be an https URL", host)
	}
	if s.authority, err = url.JoinPath(host, opts.TenantID); err != nil {
		return fmt.Errorf("token: authority: %w", err)
	}
	if s.httpClient == nil {
		s.httpClient = defaultHTTPClient()
	}
	// Every answer is bounded before MSAL parses it (limits.go).
	s.httpClient = LimitedClient(s.httpClient)
	if c := opts.Credential.Certificate; c != nil {
		if c.key == nil {
			return errors.New("token: certificate has no private key")
		}
		if a := opts.Credential.Algorithm; a != PS256 && a != RS256 {
			return fmt.Errorf("token: assertion algorithm %q: use PS256 or RS256 (config's assertion_algorithm)", a)
		}
		s.cert, s.thumbprint = c, c.ThumbprintSHA1Hex()
		s.warnExpiry(c)
	}
	var cred confidential.Credential
	switch {
	case opts.Credential.Certificate != nil:
		cred = confidential.NewCredFromAssertionCallback(s.certAssertion)
	case opts.Credential.FederatedTokenFile != "":
		cred = confidential.NewCredFromAssertionCallback(s.federatedAssertion)
	default:
		cred, err = confidential.NewCredFromSecret(opts.Credential.ClientSecret.Reveal())
		if err != nil {
			return errors.New("token: client secret rejected by MSAL")
		}
	}
	s.discovery = microsoftHosts[strings.ToLower(hu.Host)]
	if s.client, err = s.newClient(cred); err != nil {
		return err
	}
	s.acquire = func(ctx context.Context) (confidential.AuthResult, error) {
		return s.client.AcquireTokenByCredential(ctx, s.scopes)
	}
	s.explain = toEntraError
	return nil
}

func (s *EntraSource) newClient(cred confidential.Credential) (confidential.Client, error) {
	c, err := confidential.New(s.authority, s.clientID, cred,
		confidential.WithHTTPClient(s.httpClient),
		confidential.WithInstanceDiscovery(s.discovery),
		confidential.WithCache(emptyCache{}))
	if err != nil {
		return c, fmt.Errorf("token: %s", sanitize(err.Error()))
	}
	return c, nil
}

func defaultHTTPClient() *http.Client {
	return &http.Client{
		Timeout: requestTimeout,
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			ForceAttemptHTTP2:     true,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: requestTimeout,
			IdleConnTimeout:       90 * time.Second,
			MaxIdleConns:          4,
		},
	}
}
