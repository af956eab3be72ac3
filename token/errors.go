package token

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"

	msalerrors "github.com/AzureAD/microsoft-authentication-library-for-go/apps/errors"

	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/config/azurestep"
)

// EntraError is a failed token request, explained. It is built from MSAL's
// errors.CallErr (whose Req holds the client assertion or secret, so it is
// never kept or wrapped) or from a failure that got no HTTP answer.
type EntraError struct {
	// HTTPStatus is the token service's status; 0 when there was no answer
	// (network error, timeout, TLS failure).
	HTTPStatus int
	// OAuthError is the OAuth "error" field (RFC 6749 §5.2), e.g.
	// invalid_client; Microsoft advises acting on it, not on the text.
	OAuthError string
	// Codes are the AADSTS error_codes.
	Codes []int
	// Description is the first line of error_description, without the
	// Trace ID / Correlation ID / Timestamp lines, or what went wrong when
	// there was no answer.
	Description string
	// Hint is what to do, naming the Azure step (docs/azure.md#aadsts-codes).
	Hint string
	// cause is a sentinel for errors.Is (ErrNoManagedIdentityEndpoint …),
	// or nil.
	cause error
}

// Unwrap returns the failure's class (a sentinel such as
// ErrNoManagedIdentityEndpoint), or nil.
func (e *EntraError) Unwrap() error { return e.cause }

// Code is the first AADSTS code, or 0.
func (e *EntraError) Code() int {
	if len(e.Codes) == 0 {
		return 0
	}
	return e.Codes[0]
}

// Error reads "AADSTS700027: <description> — <hint>".
func (e *EntraError) Error() string {
	var b strings.Builder
	desc := e.Description
	if c := e.Code(); c != 0 {
		prefix := "AADSTS" + strconv.Itoa(c)
		b.WriteString(prefix)
		b.WriteString(": ")
		desc = strings.TrimPrefix(strings.TrimPrefix(desc, prefix+":"), " ")
	} else if e.HTTPStatus != 0 {
		fmt.Fprintf(&b, "token endpoint answered HTTP %d: ", e.HTTPStatus)
	} else {
		b.WriteString("token request failed: ")
	}
	b.WriteString(shorten(desc))
	if e.Hint != "" {
		b.WriteString(" — ")
		b.WriteString(e.Hint)
	}
	return b.String()
}

// shorten keeps the part of an Entra description that says what is wrong:
// its "[Reason - …]" and documentation links follow and only add length.
func shorten(s string) string {
	if i := strings.Index(s, " Review the documentation"); i > 0 {
		s = s[:i]
	}
	if len(s) > 400 {
		s = s[:400] + "…"
	}
	return s
}

// transientCodes are AADSTS codes documented as retryable
// (Microsoft's error codes page; docs/entra.md#error-responses) plus throttling.
var transientCodes = map[int]bool{50033: true, 90006: true, 90024: true, 90090: true, 90033: true, 50196: true, 90055: true}

// Temporary tells an outage (retry, keep using the held token) from a
// configuration error (the admin must act; retrying only backs off).
func (e *EntraError) Temporary() bool {
	if e.HTTPStatus == 0 || e.HTTPStatus >= 500 || e.HTTPStatus == http.StatusTooManyRequests {
		return true
	}
	if e.OAuthError == "temporarily_unavailable" {
		return true
	}
	for _, c := range e.Codes {
		if transientCodes[c] {
			return true
		}
	}
	return false
}

// explanation is one row of the AADSTS table (docs/azure.md#aadsts-codes).
type explanation struct {
	step azurestep.Step // 0: not an Azure step (a setting of the relay, or an outage)
	hint string
}

// explanations map AADSTS codes to the Azure step a user must revisit and
// a hint. Codes: docs/azure.md#aadsts-codes. A scope or authority host
// Entra refuses is a setting of the relay (scope, authority_host), not a
// step: the relay derives the token endpoint from the tenant and the
// authority host itself.
var explanations = map[int]explanation{
	700016:  {azurestep.RegisterApp, "wrong client ID or tenant: the client ID is not an app in this tenant; copy Application (client) ID and Directory (tenant) ID from the app's Overview page"},
	90002:   {azurestep.RegisterApp, "tenant not found: check the Directory (tenant) ID and that the authority host is the app's cloud"},
	9001023: {azurestep.RegisterApp, "use the Directory (tenant) ID, not common/consumers/organizations, as the tenant"},
	7000112: {azurestep.RegisterApp, "the application is disabled in the tenant (Enterprise applications → Properties → Enabled for users to sign-in)"},
	1000031: {azurestep.RegisterApp, "the application cannot be accessed at this time; ask the tenant administrator"},
	700027:  {azurestep.Credential, "the certificate is not registered on the app (Certificates & secrets → Upload certificate), is a different one, has expired, or was uploaded less than ~2 minutes ago (wait 2 minutes after uploading)"},
	700024:  {azurestep.Credential, "the client assertion is outside its valid time range: this host's clock is off (check NTP), or (workload identity) the projected token file is stale or expired"},
	50012:   {azurestep.Credential, "authentication failed: the assertion's signature, certificate or audience is wrong — the audience is the token endpoint the relay derives from AZURE_TENANT_ID and AZURE_AUTHORITY_HOST, so check both"},
	700030:  {azurestep.Credential, "subject name/issuer authentication: the certificate's subject is not authorized for the app"},
	50048:   {azurestep.Credential, "the client assertion's sub does not equal its iss (both must be the client ID)"},
	700021:  {azurestep.Credential, "the client assertion's iss/sub is not the client ID sent in the request"},
	7000215: {azurestep.Credential, "invalid client secret: use the secret's Value, not its Secret ID (Certificates & secrets → Client secrets)"},
	7000222: {azurestep.Credential, "the client secret has expired: create a new one under Certificates & secrets"},
	7000218: {azurestep.Credential, "no credential was sent: configure a certificate, a client secret or a federated token file"},
	70021:   {azurestep.Credential, "no federated identity credential matches the presented token's issuer/subject/audience (Certificates & secrets → Federated credentials)"},
	5002738: {azurestep.Credential, "the assertion's signature algorithm is not supported: Entra ID accepts RSA (RS256/PS256) only"},
	50027:   {azurestep.Credential, "the client assertion is not a valid JWT (malformed, missing exp or jti, or replayed)"},
	500011:  {azurestep.SendAsAppConsent, "the resource principal was not found: the scope must be " + config.DefaultScope + " (or your cloud's) and Office 365 Exchange Online must exist in the tenant"},
	70011:   {0, "invalid scope: set O365RELAY_SCOPE to " + config.DefaultScope},
	1002012: {0, "client-credential scopes must end in /.default: set O365RELAY_SCOPE to " + config.DefaultScope},
	50049:   {0, "unknown authority instance: set AZURE_AUTHORITY_HOST to the app's cloud"},
	50196:   {0, "Entra ID detected a request loop (too many identical requests); the relay backs off and caches tokens"},
	90055:   {0, "Entra ID is throttling this tenant; the relay backs off and retries"},
}

// Explain maps an AADSTS code to the Azure step to revisit
// (docs/azure.md#aadsts-codes) and a hint in the user's terms, which ends
// by naming that step. Step 0 means the code is not an Azure step (a
// setting of the relay, or Entra's own trouble); unknown codes give (0, "").
func Explain(code int) (step azurestep.Step, hint string) {
	e, ok := explanations[code]
	if !ok {
		return 0, ""
	}
	if e.step > 0 {
		return e.step, e.hint + " (" + e.step.Named() + ")"
	}
	return 0, e.hint
}

// entraBody is Entra's error JSON (docs/entra.md#error-responses).
type entraBody struct {
	Error       string `json:"error"`
	Description string `json:"error_description"`
	Codes       []int  `json:"error_codes"`
}

var aadstsPrefix = regexp.MustCompile(`^AADSTS(\d+)`)

var jwtLike = regexp.MustCompile(`eyJ[A-Za-z0-9_\-]*\.[A-Za-z0-9_\-]*\.?[A-Za-z0-9_\-]*`)

// sanitize scrubs anything that looks like a JWT from an error text we did
// not write (MSAL's JSON decode errors quote the raw response, which may
// hold an access token) and keeps it to one short line.
func sanitize(s string) string {
	s = jwtLike.ReplaceAllString(s, "[REDACTED]")
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

// toEntraError converts whatever MSAL returned into an *EntraError. It never
// keeps err itself: a CallErr carries the request with the credential.
func toEntraError(err error) *EntraError {
	var ce msalerrors.CallErr
	if errors.As(err, &ce) {
		e := &EntraError{}
		var body []byte
		if ce.Resp != nil {
			e.HTTPStatus = ce.Resp.StatusCode
			if ce.Resp.Body != nil {
				body, _ = io.ReadAll(io.LimitReader(ce.Resp.Body, 64<<10)) // MSAL buffered it; cannot fail
			}
		}
		if len(body) == 0 && ce.Err != nil {
			// The message is "http call(...) error: reply status code was N:\n<body>".
			if _, after, ok := strings.Cut(ce.Err.Error(), "\n"); ok {
				body = []byte(after)
			}
		}
		var eb entraBody
		if json.Unmarshal(body, &eb) == nil && (eb.Error != "" || len(eb.Codes) > 0) {
			e.OAuthError = eb.Error
			e.Codes = eb.Codes
			first, _, _ := strings.Cut(eb.Description, "\n")
			e.Description = sanitize(strings.TrimRight(first, "\r"))
			if len(e.Codes) == 0 {
				// Some answers carry the code only in the text.
				if m := aadstsPrefix.FindStringSubmatch(e.Description); m != nil {
					if c, err := strconv.Atoi(m[1]); err == nil {
						e.Codes = []int{c}
					}
				}
			}
		} else {
			e.Description = fmt.Sprintf("unexpected HTTP %d answer without an Entra error body", e.HTTPStatus)
		}
		if _, h := Explain(e.Code()); h != "" {
			e.Hint = h
		} else if e.Temporary() {
			e.Hint = "Entra ID is unavailable; the relay keeps using its current token until it expires and retries with backoff"
		}
		return e
	}
	var je msalerrors.InvalidJsonErr
	var le *LimitError
	switch {
	case errors.As(err, &le):
		return &EntraError{Description: le.Error(), Hint: "check that the authority host is Entra ID and not a proxy or captive portal; the relay keeps its current token and retries with backoff"}
	case errors.As(err, &je):
		return &EntraError{Description: "the token endpoint's answer is not valid JSON", Hint: "check that the authority host is Entra ID and not a proxy or captive portal"}
	case errors.Is(err, context.DeadlineExceeded):
		return &EntraError{Description: "no answer from the token endpoint in time: " + sanitize(err.Error()), Hint: "check network access to the authority host (proxy, firewall, DNS)"}
	}
	return &EntraError{Description: sanitize(err.Error()), Hint: "check network access to the authority host (proxy, firewall, DNS, TLS trust)"}
}

// SetupIDs are the user's own identifiers that a fix names, so that the
// user can copy the command or find the portal page without translating.
type SetupIDs struct {
	TenantID      string
	ClientID      string
	AuthorityHost string
	// Thumbprint is the certificate's SHA-1 thumbprint as the Azure portal
	// shows it (uppercase hex); empty for other credentials.
	Thumbprint string
	// CertificatePath is the credential file, for the openssl commands.
	CertificatePath string
}

// Fix says what to do about an AADSTS code, step by step, with ids filled
// in; it is the long form of Explain's one-line hint, for `o365relay
// doctor`. Lines are separated by "\n". Unknown codes give "".
func Fix(code int, ids SetupIDs) string {
	app := "Entra ID → App registrations → the app with Application (client) ID " + ids.ClientID
	path := ids.CertificatePath
	if path == "" {
		path = "<certificate file>"
	}
	switch code {
	case 700016:
		return app + " → Overview: copy Application (client) ID into AZURE_CLIENT_ID and Directory (tenant) ID into AZURE_TENANT_ID.\n" +
			"This relay asked tenant " + ids.TenantID + " for client " + ids.ClientID + "; if the app is registered in another tenant, use that tenant's ID."
	case 90002, 50049:
		return "Tenant " + ids.TenantID + " is not known at " + ids.AuthorityHost + ": set AZURE_TENANT_ID to the Directory (tenant) ID on the app's Overview page.\n" +
			"National clouds need their own authority host: US Government AZURE_AUTHORITY_HOST=https://login.microsoftonline.us/ (with O365RELAY_UPSTREAM=smtp.office365.us:587 and O365RELAY_SCOPE=https://outlook.office365.us/.default)."
	case 9001023:
		return "Set AZURE_TENANT_ID to the Directory (tenant) ID (a GUID or the tenant's domain), not common, consumers or organizations."
	case 700027:
		tp := ids.Thumbprint
		if tp == "" {
			tp = "<thumbprint>"
		}
		return app + " → Certificates & secrets → Certificates must list thumbprint " + tp + " with a future expiry date.\n" +
			"If it is not listed: Upload certificate with the public part of " + path + " (openssl x509 -in " + path + " -out o365relay-cert.pem).\n" +
			"If you uploaded it just now: wait 2 minutes after uploading (Entra ID takes 30-90 s to propagate it), then run o365relay doctor again.\n" +
			"If it is listed but expired: make a new certificate, upload it, and point AZURE_CLIENT_CERTIFICATE_PATH at the new file."
	case 700024:
		return "Make the local clock right (timedatectl set-ntp true; chronyc tracking); the doctor's clock check shows the offset from Entra ID.\n" +
			"With workload identity (AZURE_FEDERATED_TOKEN_FILE), check that the kubelet keeps rotating the projected token file."
	case 7000215:
		return app + " → Certificates & secrets → Client secrets: put the secret's Value (shown once, when it is created) into AZURE_CLIENT_SECRET, not its Secret ID; or use a certificate (AZURE_CLIENT_CERTIFICATE_PATH), which is recommended."
	case 7000222:
		return app + " → Certificates & secrets → Client secrets: create a new secret and put its Value into AZURE_CLIENT_SECRET; or use a certificate (AZURE_CLIENT_CERTIFICATE_PATH), which does not need rotating as often."
	case 70021:
		return app + " → Certificates & secrets → Federated credentials: the issuer must be the cluster's OIDC issuer URL, the subject system:serviceaccount:<namespace>:<service account> and the audience api://AzureADTokenExchange, exactly as in the projected token."
	case 7000218:
		return "Configure one credential: AZURE_CLIENT_CERTIFICATE_PATH (recommended), AZURE_FEDERATED_TOKEN_FILE or AZURE_CLIENT_SECRET."
	case 500011, 70011, 1002012:
		return "Set O365RELAY_SCOPE to " + config.DefaultScope + " (the default; https://outlook.office365.us/.default for GCC High); a Graph scope gives a token Exchange SMTP refuses."
	case 7000112, 1000031:
		return "Entra ID → Enterprise applications → the app " + ids.ClientID + " → Properties: set Enabled for users to sign-in to Yes, or ask the tenant administrator why the app is blocked."
	case 50012, 50048, 700021, 5002738, 50027, 700030:
		return "The client assertion was refused; with a certificate credential the relay builds it itself (PS256, x5t#S256), so check that AZURE_AUTHORITY_HOST is " + config.DefaultAuthorityHost + " (or your cloud's) and that the tenant is right; with workload identity, check the projected token."
	}
	return ""
}

// AsEntraError finds the *EntraError in a token failure, or nil.
func AsEntraError(err error) *EntraError {
	var ee *EntraError
	if errors.As(err, &ee) {
		return ee
	}
	return nil
}
