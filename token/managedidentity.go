package token

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/confidential"
	msalerrors "github.com/AzureAD/microsoft-authentication-library-for-go/apps/errors"
	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/managedidentity"
	"go.uber.org/zap"
)

// ManagedIdentity is the credential of a relay running where the platform
// holds its identity: an Azure VM (IMDS), an Azure Arc-enabled server, App
// Service, Container Apps, Functions, Cloud Shell, Azure ML or Service
// Fabric. There is no key material: MSAL's managedidentity client asks the
// platform's local endpoint for the token, and which endpoint that is MSAL
// decides from the environment (managedidentity.GetSource). Zero value:
// the system-assigned identity. docs/managed-identity.md has the design.
type ManagedIdentity struct {
	// ClientID selects a user-assigned identity by its client ID.
	ClientID string
	// ResourceID selects a user-assigned identity by its Azure resource ID
	// (sent as msi_res_id to IMDS and Arc, mi_res_id to App Service).
	ResourceID string
}

func (m ManagedIdentity) id() (managedidentity.ID, error) {
	switch {
	case m.ClientID != "" && m.ResourceID != "":
		return nil, errors.New("token: select a user-assigned managed identity by client ID or by resource ID, not both")
	case m.ClientID != "":
		return managedidentity.UserAssignedClientID(m.ClientID), nil
	case m.ResourceID != "":
		return managedidentity.UserAssignedResourceID(m.ResourceID), nil
	}
	return managedidentity.SystemAssigned(), nil
}

// String describes the identity for logs and the doctor.
func (m ManagedIdentity) String() string {
	switch {
	case m.ClientID != "":
		return "user-assigned, client ID " + m.ClientID
	case m.ResourceID != "":
		return "user-assigned, resource ID " + m.ResourceID
	}
	return "system-assigned"
}

// Sentinels for errors.Is on a managed-identity token failure (they are
// the cause of its *EntraError).
var (
	// ErrNoManagedIdentityEndpoint: nothing answered at the endpoint —
	// not an Azure VM, the Arc agent is not installed or not running.
	ErrNoManagedIdentityEndpoint = errors.New("no managed identity endpoint")
	// ErrManagedIdentityNotFound: the endpoint answered that this resource
	// has no such identity — system-assigned identity off, or the
	// user-assigned one not attached.
	ErrManagedIdentityNotFound = errors.New("managed identity not assigned to this resource")
	// ErrArcChallenge: the Azure Arc agent's challenge file could not be
	// read (the relay's user is not in the himds group).
	ErrArcChallenge = errors.New("azure arc challenge file not readable")
)

// ManagedIdentityEndpoint is MSAL's choice of managed-identity source in
// this environment and the endpoint it will call, for logs and the doctor.
// It makes no request.
func ManagedIdentityEndpoint() (source, endpoint string, err error) {
	src, err := managedidentity.GetSource()
	if err != nil {
		return "", "", err
	}
	env := func(k, def string) string {
		if v := os.Getenv(k); v != "" {
			return v
		}
		return def
	}
	switch src {
	case managedidentity.DefaultToIMDS:
		endpoint = "http://169.254.169.254/metadata/identity/oauth2/token"
	case managedidentity.AzureArc:
		endpoint = env("IDENTITY_ENDPOINT", "http://127.0.0.1:40342/metadata/identity/oauth2/token")
	case managedidentity.CloudShell, managedidentity.AzureML:
		endpoint = os.Getenv("MSI_ENDPOINT")
	default: // App Service and its kin, Service Fabric
		endpoint = os.Getenv("IDENTITY_ENDPOINT")
	}
	if u, err := url.Parse(endpoint); err == nil {
		u.RawQuery, u.User = "", nil // the endpoint only, never a query or userinfo
		endpoint = u.String()
	}
	return sourceName(src), endpoint, nil
}

// sourceName is the platform's name for MSAL's source.
func sourceName(s managedidentity.Source) string {
	switch s {
	case managedidentity.DefaultToIMDS:
		return "IMDS (Azure VM)"
	case managedidentity.AzureArc:
		return "Azure Arc"
	case managedidentity.AppService:
		return "App Service"
	case managedidentity.CloudShell:
		return "Cloud Shell"
	case managedidentity.AzureML:
		return "Azure ML"
	case managedidentity.ServiceFabric:
		return "Service Fabric"
	}
	return string(s)
}

// miDialTimeout: every managed-identity endpoint is on this machine or
// link-local, so a connection either completes at once or never (not on
// Azure); 3 s still allows one lost SYN. MSAL tries IMDS 3 times, so "no
// endpoint" is known within ~11 s.
const miDialTimeout = 3 * time.Second

// miHTTPClient talks to the managed-identity endpoint. Never through a
// proxy: the endpoint is this machine's own (IMDS answers only the VM that
// asks, and a proxy on another VM would get that VM's identity), so
// HTTPS_PROXY, which the relay honours for Entra ID, is ignored here.
// Redirects are refused: no endpoint sends one, and the App Service header
// and the Arc secret must go nowhere else.
func miHTTPClient() *http.Client {
	return &http.Client{
		Timeout: requestTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return errors.New("the managed identity endpoint answered with a redirect, which is not followed")
		},
		Transport: &http.Transport{
			Proxy:                 nil,
			DialContext:           (&net.Dialer{Timeout: miDialTimeout}).DialContext,
			ResponseHeaderTimeout: requestTimeout,
			IdleConnTimeout:       90 * time.Second,
			MaxIdleConns:          2,
		},
	}
}

// initManagedIdentity makes s get its tokens from the platform's
// managed-identity endpoint. The rest of the EntraSource — cache, single
// flight, refresh, backoff, metrics — is the same for every credential.
func (s *EntraSource) initManagedIdentity(m ManagedIdentity, httpClient *http.Client) error {
	id, err := m.id()
	if err != nil {
		return err
	}
	if httpClient == nil {
		httpClient = miHTTPClient()
	}
	// The same bounds on the answer as for Entra ID (limits.go).
	httpClient = LimitedClient(httpClient)
	s.httpClient = httpClient
	client, err := managedidentity.New(id, managedidentity.WithHTTPClient(httpClient))
	if err != nil {
		// For example a user-assigned identity where the platform has
		// none (Cloud Shell, Service Fabric).
		return fmt.Errorf("token: managed identity (%s): %s", m, sanitize(err.Error()))
	}
	source, endpoint, err := ManagedIdentityEndpoint()
	if err != nil {
		return fmt.Errorf("token: managed identity: %s", sanitize(err.Error()))
	}
	// The resource is the scope without /.default (MSAL strips it too).
	resource := strings.TrimSuffix(s.scopes[0], "/.default")
	s.acquire = func(ctx context.Context) (confidential.AuthResult, error) {
		// MSAL keeps managed-identity tokens in a cache of its own, one
		// per process, with no accessor to replace (unlike the
		// confidential client's WithCache); a call with claims skips it.
		// The claims ask for a token issued no earlier than now (the CAE
		// claims-challenge form), which is what every call here wants:
		// the EntraSource is the cache and calls only when it needs a
		// new token. MSAL v1.10.1 sends the claims nowhere
		// (managedidentity.go AcquireToken).
		return client.AcquireToken(ctx, resource, managedidentity.WithClaims(freshClaims(s.clock())))
	}
	s.explain = func(err error) *EntraError { return explainManagedIdentity(err, source, endpoint, m) }
	s.log.Info("managed identity", zap.String("source", source), zap.String("endpoint", endpoint), zap.String("identity", m.String()))
	return nil
}

// freshClaims is a claims request for an access token issued at or after
// now (OpenID Connect Core §5.5 "essential" claim, as Entra's
// claims challenges use it).
func freshClaims(now time.Time) string {
	return `{"access_token":{"nbf":{"essential":true,"value":"` + strconv.FormatInt(now.Unix(), 10) + `"}}}`
}

// explainManagedIdentity turns what MSAL's managed-identity client returned
// into an *EntraError whose cause is one of the sentinels above where the
// failure is one of them, with the fix for this source.
func explainManagedIdentity(err error, source, endpoint string, m ManagedIdentity) *EntraError {
	ee := toEntraError(err)
	var ce msalerrors.CallErr
	switch {
	case errors.As(err, &ce):
		if ee.Code() != 0 {
			return ee // Entra's own refusal, forwarded: the AADSTS table explains it
		}
		if d := appServiceMessage(err); d != "" {
			ee.Description = d
		}
		status := ee.HTTPStatus
		desc := strings.ToLower(ee.Description)
		if (status == http.StatusBadRequest || status == http.StatusNotFound) &&
			(strings.Contains(desc, "identity") || strings.Contains(desc, "msi")) {
			ee.cause = ErrManagedIdentityNotFound
			ee.Hint = notAssignedHint(source, m)
			return ee
		}
		if ee.Hint == "" || ee.Temporary() {
			ee.Hint = "the managed identity endpoint (" + source + ") failed; the relay keeps using its current token until it expires and retries with backoff"
		}
		return ee
	case isArcChallengeError(err):
		ee.cause = ErrArcChallenge
		ee.Description = "the Azure Arc agent's challenge file: " + sanitize(err.Error())
		ee.Hint = "the relay's user must be able to read the agent's key files in /var/opt/azcmagent/tokens: add it to the himds group (systemd: SupplementaryGroups=himds)"
		return ee
	case isNoEndpoint(err):
		ee.cause = ErrNoManagedIdentityEndpoint
		ee.Description = "no managed identity endpoint answered at " + endpoint + " (" + source + "): " + sanitize(networkCause(err))
		ee.Hint = noEndpointHint(source)
		return ee
	}
	ee.Hint = "the managed identity endpoint (" + source + ", " + endpoint + ") failed; the relay retries with backoff"
	return ee
}

func notAssignedHint(source string, m ManagedIdentity) string {
	where := "this VM"
	switch source {
	case "Azure Arc":
		where = "this Arc-enabled server"
	case "App Service":
		where = "this app"
	}
	if m.ClientID != "" || m.ResourceID != "" {
		return "the user-assigned identity (" + m.String() + ") is not assigned to " + where + ": assign it (portal: Identity → User assigned → Add), or correct AZURE_CLIENT_ID / O365RELAY_MANAGED_IDENTITY_RESOURCE_ID"
	}
	return "the system-assigned identity of " + where + " is off: turn it on (portal: Identity → System assigned → On), or name a user-assigned identity with AZURE_CLIENT_ID"
}

func noEndpointHint(source string) string {
	switch source {
	case "Azure Arc":
		return "the Azure Connected Machine agent is not running here: check systemctl status himdsd, or connect the server with azcmagent connect"
	case "IMDS (Azure VM)":
		return "this host is not an Azure VM (the Instance Metadata Service answers only there), or a firewall blocks 169.254.169.254:80; on an on-premises server, enroll it in Azure Arc; elsewhere use a certificate credential"
	}
	return "the platform's managed identity endpoint did not answer: check that managed identity is enabled for this resource"
}

// isNoEndpoint: nothing accepted the connection, or nothing answered in
// time. (A connection that was accepted and then dropped is an endpoint
// failing, not a missing one.)
func isNoEndpoint(err error) bool {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" {
		return true
	}
	var ne net.Error
	return (errors.As(err, &ne) && ne.Timeout()) || errors.Is(err, context.DeadlineExceeded)
}

// networkCause is the innermost network error's text, without the URL.
func networkCause(err error) string {
	var oe *net.OpError
	if errors.As(err, &oe) {
		return oe.Error()
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
}

// isArcChallengeError recognises MSAL's errors from the Arc challenge
// (managedidentity.go getAzureArcSecretKey): they are plain errors, so
// their text is all there is to go by.
func isArcChallengeError(err error) bool {
	s := err.Error()
	for _, m := range []string{"www-authenticate", "basic realm", "invalid file extension", "invalid file path", "failed to get metadata for", "invalid secret file size", "failed to read", "expected a 401 response"} {
		if strings.Contains(strings.ToLower(s), m) {
			return true
		}
	}
	return false
}

// appServiceMessage reads App Service's error shape, {"statusCode":400,
// "message":"..."} or {"error":{"message":"..."}}, which has no OAuth
// error_description.
func appServiceMessage(err error) string {
	_, body, ok := strings.Cut(err.Error(), "\n")
	if !ok {
		return ""
	}
	var v map[string]json.RawMessage
	if json.Unmarshal([]byte(body), &v) != nil {
		return ""
	}
	var msg string
	if json.Unmarshal(v["message"], &msg) == nil && msg != "" {
		return sanitize(msg)
	}
	var inner struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(v["error"], &inner) == nil && inner.Message != "" {
		return sanitize(inner.Message)
	}
	return ""
}
