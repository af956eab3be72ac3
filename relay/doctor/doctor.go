// Package doctor owns the setup checklist behind `o365relay doctor`: the
// ordered checks that tell a user which of the Azure and Exchange setup
// steps (README.md "In Azure", docs/azure.md#the-seven-steps) is wrong, from
// the outside, with the fix spelled out in the user's own IDs.
//
// The checks, in order (Check.Step):
//
//  1. the configuration is complete (what `serve` needs); the local clock
//     agrees with Entra ID's (client assertions are valid for minutes);
//  2. the credential loads: certificate and key match, the certificate is
//     inside its validity window (warning under 30 days), thumbprints;
//  3. Entra ID issues a token (AADSTS codes mapped by token.Explain/Fix);
//  4. the token's claims: audience Exchange Online, the tenant, the app,
//     the SMTP.SendAsApp role (its absence is a warning: Exchange RBAC for
//     Applications legitimately issues tokens without it);
//  5. the upstream is reachable, offers STARTTLS, and its certificate
//     verifies;
//  6. AUTH XOAUTH2 succeeds for each mailbox (no mail is sent);
//  7. the spool directory is writable and the listen addresses are free or
//     held by this relay.
//
// A check that cannot run because an earlier one failed is reported as
// skipped, naming what it needs. Report.OK is true when no check failed;
// warnings do not fail the report (a tenant using RBAC for Applications
// must be able to pass).
//
// Clock: the reference is the Date header of an HTTPS answer from the
// authority host (RFC 9110 §6.6.1: an origin server with a clock must send
// it), i.e. the clock of the service that checks the assertion's nbf/exp.
// Entra ID is not documented to tolerate any skew; the usual JWT leeway, and
// the fake's, is 5 minutes, so more than 5 minutes fails and more than 1
// minute warns. Date has one-second resolution and the request's round trip
// is subtracted as uncertainty, so a healthy NTP-synced host shows 0-1 s.
package doctor

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/config/azurestep"
	"github.com/o365relay/o365relay/relay/upstream"
	"github.com/o365relay/o365relay/token"
)

// The doctor's own check numbers (Check.Step), in the order the checks
// run. They are not Azure step numbers (config/azurestep): texts call
// these "check N" and the Azure steps "Azure step N".
const (
	stepConfig     = iota + 1 // configuration and clock
	stepCredential            // the credential loads
	stepToken                 // Entra ID issues a token
	stepClaims                // the token's claims
	stepUpstream              // Exchange reachable, TLS verifies
	stepAuth                  // AUTH per mailbox
	stepLocal                 // spool and listeners
)

// checkRef names one of the doctor's own checks in a text: "check 3".
func checkRef(step int) string { return fmt.Sprintf("check %d", step) }

// azureSteps is Check.AzureSteps for the steps a fix is in.
func azureSteps(steps ...azurestep.Step) []int {
	out := make([]int, len(steps))
	for i, s := range steps {
		out[i] = int(s)
	}
	return out
}

// Status of one check.
type Status string

const (
	OK   Status = "ok"
	Warn Status = "warn"
	Fail Status = "fail"
	Skip Status = "skip" // could not run because an earlier check failed
)

// Check is the outcome of one check.
type Check struct {
	// Step is the doctor's checklist number, 1-7 (package comment).
	Step int `json:"step"`
	// Name is short and stable, for scripts: configuration, clock,
	// credential, token, claims, upstream, auth, spool, listener.
	Name string `json:"name"`
	// Target is what was checked when a check runs per item: the mailbox
	// for auth.
	Target string `json:"target,omitempty"`
	Status Status `json:"status"`
	// Message says what was found, in one line.
	Message string `json:"message"`
	// AzureSteps are the Azure steps the fix is in (config/azurestep's
	// numbers, as README.md "In Azure" lists them).
	AzureSteps []int `json:"azure_steps,omitempty"`
	// Fix is what to do, with the user's IDs filled in; lines separated
	// by "\n" (commands to run are lines of their own).
	Fix string `json:"fix,omitempty"`
	// Details are facts a script may want (thumbprints, TLS version...).
	Details map[string]string `json:"details,omitempty"`
}

// Report is the whole checklist.
type Report struct {
	OK     bool    `json:"ok"`
	Checks []Check `json:"checks"`
}

// Failed returns the failed checks.
func (r *Report) Failed() []Check {
	var out []Check
	for _, c := range r.Checks {
		if c.Status == Fail {
			out = append(out, c)
		}
	}
	return out
}

// Find returns the first check called name, or nil.
func (r *Report) Find(name string) *Check {
	for i := range r.Checks {
		if r.Checks[i].Name == name {
			return &r.Checks[i]
		}
	}
	return nil
}

// Options configure Run. Config is required; the rest may be zero.
type Options struct {
	Config *config.Config
	// Mailboxes to check AUTH for; nil means every mailbox the
	// configuration routes to (Config.Mailboxes: the mailbox setting and
	// each sender rule's).
	Mailboxes []string
	// HTTPClient talks to Entra ID; nil means one with the system roots
	// (which SSL_CERT_FILE extends), as the daemon uses.
	HTTPClient *http.Client
	// ManagedIdentityHTTPClient talks to the managed-identity endpoint;
	// nil means the token package's (no proxy), as the daemon uses.
	ManagedIdentityHTTPClient *http.Client
	// RootCAs verify Exchange; nil means the system roots.
	RootCAs *x509.CertPool
	// Clock is the local clock; nil means time.Now. The clock check
	// compares it with Entra ID's; token assertions are signed with it.
	Clock func() time.Time
	// Timeout bounds each network check; default 30 s.
	Timeout time.Duration
	// Logger receives the token source's and upstream client's logs; nil
	// discards (the checklist says what matters).
	Logger *zap.Logger
}

func (o *Options) defaults() {
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: o.Timeout}
	}
	if o.Mailboxes == nil {
		o.Mailboxes = o.Config.Mailboxes()
	}
}

// doctor carries what later checks need from earlier ones.
type doctor struct {
	o   Options
	cfg *config.Config
	r   Report

	configOK bool
	cred     *token.Credential // nil when check 2 failed
	ids      token.SetupIDs
	src      *token.EntraSource
	tok      *token.Token
	claims   *token.Claims
	up       *upstream.Client
	tlsOK    bool
}

// Run runs every check and returns the report. It never sends mail, and it
// changes nothing on disk except a temporary file in the spool directory,
// removed at once.
func Run(ctx context.Context, o Options) *Report {
	if o.Config == nil {
		return &Report{Checks: []Check{ConfigError(errors.New("no configuration"))}}
	}
	o.defaults()
	d := &doctor{o: o, cfg: o.Config}
	d.ids = token.SetupIDs{TenantID: d.cfg.TenantID, ClientID: d.cfg.ClientID, AuthorityHost: d.cfg.AuthorityHost, CertificatePath: d.cfg.CertificatePath}
	defer d.close()
	d.checkConfig()
	d.checkClock(ctx)
	d.checkCredential()
	d.checkToken(ctx)
	d.checkClaims()
	d.checkUpstream(ctx)
	d.checkAuth(ctx)
	d.checkSpool()
	d.checkListeners()
	d.r.OK = len(d.r.Failed()) == 0
	return &d.r
}

// ConfigError is check 1 for a configuration that did not load (config.Load
// failed): the text names every bad setting.
func ConfigError(err error) Check {
	return Check{Step: stepConfig, Name: "configuration", Status: Fail, Message: oneLine(err.Error()),
		Fix: "Fix each setting named above (README.md, Configuration reference); flags beat environment beat the file."}
}

func (d *doctor) add(c Check) { d.r.Checks = append(d.r.Checks, c) }

func (d *doctor) skip(step int, name, target, why string) {
	d.add(Check{Step: step, Name: name, Target: target, Status: Skip, Message: "skipped: " + why})
}

func (d *doctor) close() {
	if d.up != nil {
		if err := d.up.Close(); err != nil {
			d.o.Logger.Debug("closing upstream client", zap.Error(err))
		}
	}
	if d.src != nil {
		if err := d.src.Close(); err != nil {
			d.o.Logger.Debug("closing token source", zap.Error(err))
		}
	}
}

// --- 1. configuration and clock -------------------------------------------

func (d *doctor) checkConfig() {
	cfg := d.cfg
	c := Check{Step: stepConfig, Name: "configuration"}
	if err := cfg.CheckDaemon(); err != nil {
		c.Status = Fail
		c.Message = oneLine(err.Error())
		c.Fix = "Set each setting named above (environment, --flag or the config file; README.md, Configuration reference)."
		var ce *config.Error
		if errors.As(err, &ce) && (cfg.TenantID == "" || cfg.ClientID == "") {
			c.AzureSteps = azureSteps(azurestep.RegisterApp)
			c.Fix += "\nThe tenant and client IDs are on the app registration's Overview page (Entra ID → App registrations)."
		}
		d.add(c)
		return
	}
	d.configOK = true
	c.Status = OK
	c.Message = fmt.Sprintf("tenant %s, client %s, %s credential, mailbox %s, upstream %s, authority %s",
		cfg.TenantID, cfg.ClientID, cfg.Credential(), strings.Join(d.o.Mailboxes, ", "), cfg.Upstream, d.cfg.AuthorityHost)
	if d.managedIdentity() {
		c.Message = d.miConfigMessage()
	}
	if len(cfg.Warnings) > 0 {
		c.Status = Warn
		c.Message += "; " + strings.Join(cfg.Warnings, "; ")
	}
	d.add(c)
}

// Clock thresholds; see the package comment.
const (
	clockWarn = time.Minute
	clockFail = 5 * time.Minute
)

func (d *doctor) checkClock(ctx context.Context) {
	if d.managedIdentity() {
		d.skip(stepConfig, "clock", "", "not needed: a managed identity signs no client assertion (the platform's endpoint gets the token)")
		return
	}
	c := Check{Step: stepConfig, Name: "clock"}
	u, err := url.JoinPath(d.cfg.AuthorityHost, d.tenantOr("common"), "v2.0/.well-known/openid-configuration")
	if err != nil {
		c.Status, c.Message = Warn, "cannot build the authority URL: "+err.Error()
		d.add(c)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, d.o.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		c.Status, c.Message = Warn, "cannot build the request: "+err.Error()
		d.add(c)
		return
	}
	sent := time.Now()
	resp, err := d.o.HTTPClient.Do(req)
	rtt := time.Since(sent)
	local := d.o.Clock()
	if err != nil {
		// The token check reports the same failure with its fix.
		c.Status = Warn
		c.Message = "could not compare with Entra ID's clock: " + oneLine(sanitizeURLError(err))
		d.add(c)
		return
	}
	if cerr := resp.Body.Close(); cerr != nil {
		d.o.Logger.Debug("closing response", zap.Error(cerr))
	}
	remote, err := http.ParseTime(resp.Header.Get("Date"))
	if err != nil {
		c.Status, c.Message = Warn, "the authority host sent no usable Date header; cannot check the clock"
		d.add(c)
		return
	}
	// Date is truncated to the second and taken somewhere during the round
	// trip: that much offset means nothing.
	skew := local.Sub(remote)
	abs := skew
	if abs < 0 {
		abs = -abs
	}
	slack := time.Second + rtt
	dir := "ahead of"
	if skew < 0 {
		dir = "behind"
	}
	c.Details = map[string]string{"offset_seconds": fmt.Sprintf("%.0f", skew.Seconds()), "reference": req.URL.Host}
	switch {
	case abs > clockFail+slack:
		c.Status = Fail
		c.Message = fmt.Sprintf("the local clock is %s %s Entra ID's (Date header of %s); client assertions are valid for 5 minutes and Entra ID refuses them with AADSTS700024", abs.Round(time.Second), dir, req.URL.Host)
		c.Fix = "Turn on time synchronisation: timedatectl set-ntp true (systemd-timesyncd) or chronyc makestep; in a container, fix the host's clock."
	case abs > clockWarn+slack:
		c.Status = Warn
		c.Message = fmt.Sprintf("the local clock is %s %s Entra ID's (Date header of %s); over 5 minutes assertions are refused", abs.Round(time.Second), dir, req.URL.Host)
		c.Fix = "Turn on time synchronisation: timedatectl set-ntp true (systemd-timesyncd) or chronyc makestep."
	default:
		c.Status = OK
		c.Message = fmt.Sprintf("local clock within %s of Entra ID's (Date header of %s)", max(abs, time.Second).Round(time.Second), req.URL.Host)
	}
	d.add(c)
}

func (d *doctor) tenantOr(def string) string {
	if d.cfg.TenantID != "" {
		return d.cfg.TenantID
	}
	return def
}

// --- 2. credential ---------------------------------------------------------

// certWarn: certificates expiring sooner get a warning (the token source
// logs the same at start).
const certWarn = 30 * 24 * time.Hour

func (d *doctor) checkCredential() {
	cfg := d.cfg
	switch cfg.Credential() {
	case "certificate":
		d.checkCertificate()
	case "federated":
		d.checkFederated()
	case config.CredManagedIdentity:
		d.checkManagedIdentity()
	case "secret":
		cred, err := token.CredentialFromConfig(cfg, d.o.Logger)
		if err != nil {
			d.add(Check{Step: stepCredential, Name: "credential", Status: Fail, Message: oneLine(err.Error())})
			return
		}
		d.cred = &cred
		d.add(Check{Step: stepCredential, Name: "credential", Status: OK,
			Message: "client secret (its expiry date is only shown in the portal: Certificates & secrets → Client secrets); a certificate is recommended"})
	default:
		d.skip(stepCredential, "credential", "", "no credential is configured ("+checkRef(stepConfig)+")")
	}
}

func (d *doctor) checkCertificate() {
	cfg := d.cfg
	c := Check{Step: stepCredential, Name: "credential"}
	cert, err := token.LoadCertificate(cfg.CertificatePath, cfg.CertificatePassword)
	if err != nil {
		c.Status = Fail
		c.AzureSteps = azureSteps(azurestep.Credential)
		c.Message = "AZURE_CLIENT_CERTIFICATE_PATH: " + oneLine(err.Error())
		// token.LoadCertificate says "key does not match the certificate"
		// for a key that is not the certificate's (token/cert.go).
		if errors.Is(err, token.ErrKeyMismatch) {
			p := cfg.CertificatePath
			c.Fix = "The file must hold the certificate uploaded to the app and the private key it was made with. Compare the two public keys; both commands must print the same hash:\n" +
				"openssl x509 -noout -pubkey -in " + p + " | openssl sha256\n" +
				"openssl pkey -pubout -in " + p + " | openssl sha256\n" +
				"If the key is lost, make a new pair and upload the new certificate (" + azurestep.Credential.String() + ")."
		} else {
			c.Fix = "AZURE_CLIENT_CERTIFICATE_PATH must name a PEM file with the certificate and its RSA private key (PKCS #1, PKCS #8 or encrypted PKCS #8 with AZURE_CLIENT_CERTIFICATE_PASSWORD), or a .pfx/.p12 file."
		}
		d.add(c)
		return
	}
	d.ids.Thumbprint = cert.ThumbprintSHA1Hex()
	d.cred = &token.Credential{Certificate: cert, Algorithm: token.Algorithm(cfg.AssertionAlgorithm)}
	sha256hex := thumbprintSHA256Hex(cert)
	c.Details = map[string]string{
		"subject":             cert.Leaf.Subject.String(),
		"not_before":          cert.NotBefore().UTC().Format(time.RFC3339),
		"not_after":           cert.NotAfter().UTC().Format(time.RFC3339),
		"thumbprint_sha1":     cert.ThumbprintSHA1Hex(),
		"thumbprint_sha256":   sha256hex,
		"x5t#S256":            cert.ThumbprintSHA256(),
		"assertion_algorithm": cfg.AssertionAlgorithm,
	}
	now := d.o.Clock()
	thumbs := fmt.Sprintf("SHA-1 thumbprint %s (as the Azure portal shows it), SHA-256 %s", cert.ThumbprintSHA1Hex(), sha256hex)
	upload := "Entra ID → App registrations → " + cfg.ClientID + " → Certificates & secrets → Upload certificate"
	newCert := "openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj /CN=o365relay -keyout key.pem -out cert.pem && cat cert.pem key.pem > o365relay.pem && chmod 600 o365relay.pem"
	switch left := cert.NotAfter().Sub(now); {
	case now.Before(cert.NotBefore()):
		c.Status = Fail
		c.AzureSteps = azureSteps(azurestep.Credential)
		c.Message = fmt.Sprintf("certificate %s is not valid before %s (check the local clock); %s", cert.Leaf.Subject, cert.NotBefore().UTC().Format(time.RFC3339), thumbs)
		c.Fix = "Use a certificate that is valid now, or fix the local clock (see the clock check)."
	case left <= 0:
		c.Status = Fail
		c.AzureSteps = azureSteps(azurestep.Credential)
		c.Message = fmt.Sprintf("certificate %s expired on %s; Entra ID refuses it (AADSTS700027); %s", cert.Leaf.Subject, cert.NotAfter().UTC().Format(time.RFC3339), thumbs)
		c.Fix = "Make a new certificate and key:\n" + newCert + "\n" +
			upload + " (cert.pem), then set AZURE_CLIENT_CERTIFICATE_PATH to the new o365relay.pem; remove the expired certificate from the app afterwards."
	case left < certWarn:
		c.Status = Warn
		c.AzureSteps = azureSteps(azurestep.Credential)
		c.Message = fmt.Sprintf("certificate %s expires on %s, in %d days; %s", cert.Leaf.Subject, cert.NotAfter().UTC().Format(time.RFC3339), int(left.Hours()/24), thumbs)
		c.Fix = "Make its successor now and upload it next to the current one (both work during the overlap):\n" + newCert + "\n" + upload
	default:
		c.Status = OK
		c.Message = fmt.Sprintf("certificate %s and its key match, valid until %s (%d days); %s", cert.Leaf.Subject, cert.NotAfter().UTC().Format("2006-01-02"), int(left.Hours()/24), thumbs)
	}
	if c.Status == OK {
		if w := token.KeyFileWarning(cfg.CertificatePath); w != "" {
			c.Status = Warn
			c.Message += "; " + w
			c.Fix = "chmod 600 " + cfg.CertificatePath + " (or 0440 with a dedicated group)"
		}
	}
	d.add(c)
}

func (d *doctor) checkFederated() {
	c := Check{Step: stepCredential, Name: "credential"}
	info, err := federatedInfo(d.cfg.FederatedTokenFile, d.o.Clock())
	if err != nil {
		c.Status = Fail
		c.AzureSteps = azureSteps(azurestep.Credential)
		c.Message = "AZURE_FEDERATED_TOKEN_FILE: " + oneLine(err.Error())
		c.Fix = "The file must be the projected service account token (azure.workload.identity/use: \"true\" on the pod; the webhook mounts it at /var/run/secrets/azure/tokens/azure-identity-token)."
		d.add(c)
		return
	}
	cred, err := token.CredentialFromConfig(d.cfg, d.o.Logger)
	if err != nil {
		c.Status, c.Message = Fail, oneLine(err.Error())
		d.add(c)
		return
	}
	d.cred = &cred
	c.Status = OK
	c.Message = "federated token file: " + info
	d.add(c)
}

// --- 3. token ----------------------------------------------------------------

func (d *doctor) checkToken(ctx context.Context) {
	c := Check{Step: stepToken, Name: "token"}
	switch {
	case !d.configOK:
		d.skip(stepToken, "token", "", "the configuration is incomplete ("+checkRef(stepConfig)+")")
		return
	case d.cred == nil:
		d.skip(stepToken, "token", "", "the credential did not load ("+checkRef(stepCredential)+")")
		return
	}
	httpClient := d.o.HTTPClient
	if d.cred.ManagedIdentity != nil {
		httpClient = d.o.ManagedIdentityHTTPClient
	}
	src, err := token.NewSource(token.Options{
		AuthorityHost: d.cfg.AuthorityHost,
		TenantID:      d.cfg.TenantID,
		ClientID:      d.cfg.ClientID,
		Scope:         d.cfg.Scope,
		Credential:    *d.cred,
		HTTPClient:    httpClient,
		Clock:         d.o.Clock,
		Logger:        d.o.Logger.Named("token"),
	})
	if err != nil {
		c.Status, c.Message = Fail, oneLine(err.Error())
		c.Fix = "Fix the identity settings named above (README.md, Configuration reference)."
		d.add(c)
		return
	}
	d.src = src
	tctx, cancel := context.WithTimeout(ctx, d.o.Timeout)
	defer cancel()
	tok, err := src.Token(tctx)
	if err != nil {
		c.Status = Fail
		if ee := token.AsEntraError(err); ee != nil {
			c.Message = oneLine(ee.Error())
			if step, _ := token.Explain(ee.Code()); step > 0 {
				c.AzureSteps = azureSteps(step)
			}
			c.Fix = token.Fix(ee.Code(), d.ids)
			if d.cred.ManagedIdentity != nil && ee.Code() == 0 {
				c.Fix = token.ManagedIdentityFix(err, *d.cred.ManagedIdentity)
			}
			if c.Fix == "" && ee.Code() == 0 {
				c.Fix = "Check that this host reaches " + d.cfg.AuthorityHost + " over HTTPS (proxy: HTTPS_PROXY; firewall; DNS), and that its certificate is trusted (SSL_CERT_FILE for a TLS-inspecting proxy's CA)."
			}
			if ee.Code() != 0 {
				c.Details = map[string]string{"aadsts": fmt.Sprint(ee.Code()), "oauth_error": ee.OAuthError}
			}
		} else {
			c.Message = oneLine(err.Error())
		}
		d.add(c)
		return
	}
	d.tok = &tok
	c.Status = OK
	c.Message = fmt.Sprintf("Entra ID issued a token for %s, valid until %s (%s)", d.cfg.Scope, tok.ExpiresOn.UTC().Format("15:04:05Z"), tok.ExpiresOn.Sub(d.o.Clock()).Round(time.Minute))
	d.add(c)
}

// --- 4. claims ---------------------------------------------------------------

// exchangeAppID is Office 365 Exchange Online's application ID, which some
// tokens carry as aud instead of the resource URI.
const exchangeAppID = "00000002-0000-0ff1-ce00-000000000000"

// RoleSendAsApp is the application permission SMTP AUTH with client
// credentials needs (Azure step 2, docs/azure.md#step-2-smtpsendasapp-and-admin-consent).
const RoleSendAsApp = "SMTP.SendAsApp"

func (d *doctor) checkClaims() {
	if d.tok == nil {
		d.skip(stepClaims, "claims", "", "no token ("+checkRef(stepToken)+")")
		return
	}
	c := Check{Step: stepClaims, Name: "claims"}
	cl, err := token.ParseClaims(*d.tok)
	if err != nil {
		c.Status, c.Message = Warn, "the token cannot be decoded ("+err.Error()+"); Exchange decides in "+checkRef(stepAuth)
		d.add(c)
		return
	}
	d.claims = &cl
	c.Details = map[string]string{"aud": strings.Join(cl.Audience, ","), "tid": cl.TenantID, "appid": cl.AppID, "oid": cl.ObjectID, "roles": strings.Join(cl.Roles, ","),
		"exp": cl.ExpiresAt.UTC().Format(time.RFC3339)}
	wantAud := strings.TrimSuffix(d.cfg.Scope, "/.default")
	var problems, fixes []string
	if !contains(cl.Audience, wantAud) && !contains(cl.Audience, exchangeAppID) {
		problems = append(problems, fmt.Sprintf("audience is %s, not Exchange Online (%s)", strings.Join(cl.Audience, ","), wantAud))
		fixes = append(fixes, "Set O365RELAY_SCOPE to "+config.DefaultScope+" (the default).")
	}
	if isGUID(d.cfg.TenantID) && !strings.EqualFold(cl.TenantID, d.cfg.TenantID) {
		problems = append(problems, fmt.Sprintf("tenant is %s, not AZURE_TENANT_ID %s", cl.TenantID, d.cfg.TenantID))
		fixes = append(fixes, "Set AZURE_TENANT_ID to the Directory (tenant) ID of the tenant the mailboxes are in.")
	}
	if cl.AppID != "" && d.cfg.ClientID != "" && !strings.EqualFold(cl.AppID, d.cfg.ClientID) {
		problems = append(problems, fmt.Sprintf("app is %s, not AZURE_CLIENT_ID %s", cl.AppID, d.cfg.ClientID))
	}
	summary := fmt.Sprintf("aud %s, tenant %s, app %s, service principal object ID (oid) %s, roles [%s], expires %s",
		strings.Join(cl.Audience, ","), cl.TenantID, cl.AppID, orUnknown(cl.ObjectID), strings.Join(cl.Roles, " "), cl.ExpiresAt.UTC().Format(time.RFC3339))
	switch {
	case len(problems) > 0:
		c.Status = Fail
		c.Message = strings.Join(problems, "; ") + " (" + summary + ")"
		c.Fix = strings.Join(fixes, "\n")
	case !cl.HasRole(RoleSendAsApp) && d.managedIdentity():
		c.Status = Warn
		c.Message = "the token has no " + RoleSendAsApp + " role: the managed identity's service principal has no app role assignment on Office 365 Exchange Online (a managed identity has no API permissions page) — unless Exchange RBAC for Applications is used (" + checkRef(stepAuth) + " shows whether Exchange accepts the token) (" + summary + ")"
		c.Fix = d.consentFix()
	case !cl.HasRole(RoleSendAsApp):
		c.Status = Warn
		c.AzureSteps = azureSteps(azurestep.SendAsAppConsent)
		c.Message = "the token has no " + RoleSendAsApp + " role: admin consent for the API permission was not granted — unless the app uses Exchange RBAC for Applications, which legitimately issues tokens without it (" + checkRef(stepAuth) + " shows whether Exchange accepts the token) (" + summary + ")"
		c.Fix = d.consentFix() + "\nOr, with Exchange RBAC for Applications (no API permission), assign the role instead:\n" + d.rbacFix()
	default:
		c.Status = OK
		c.Message = summary
	}
	d.add(c)
}

func (d *doctor) consentFix() string {
	if d.managedIdentity() {
		return d.miRoleFix()
	}
	return "Entra ID → App registrations → " + d.cfg.ClientID + " → API permissions → Add a permission → APIs my organization uses → Office 365 Exchange Online → Application permissions → SMTP.SendAsApp, then Grant admin consent for the tenant (or open " + config.DefaultAuthorityHost + d.cfg.TenantID + "/adminconsent?client_id=" + d.cfg.ClientID + ")."
}

func (d *doctor) rbacFix() string {
	return "Connect-ExchangeOnline -Organization " + d.tenantID() + "\n" +
		"New-ServicePrincipal -AppId " + d.appID() + " -ObjectId " + d.objectID() + " -Organization " + d.tenantID() + "\n" +
		"New-ManagementRoleAssignment -Role 'Application SMTP.SendAsApp' -App " + d.appID() + " -CustomResourceScope <management scope containing the mailboxes>"
}

// objectID is the Enterprise application's (service principal's) object
// ID: the token's oid claim is exactly that, so the user need not find it
// in the portal (where the app registration's own, different object ID is
// the one shown first — the usual mistake, docs/azure.md#step-5-new-serviceprincipal).
func (d *doctor) objectID() string {
	if d.claims != nil && d.claims.ObjectID != "" {
		return d.claims.ObjectID
	}
	if d.managedIdentity() {
		return "<object (principal) ID on the managed identity's Identity page>"
	}
	return "<object ID from Entra ID → Enterprise applications → " + d.cfg.ClientID + ">"
}

// --- 5. upstream ---------------------------------------------------------------

// noToken is the token source of an upstream client when check 3 could not
// run: ProbeTLS never asks it.
type noToken struct{}

func (noToken) Token(context.Context) (token.Token, error) {
	return token.Token{}, errors.New("no token source")
}

func (noToken) Refresh(context.Context, token.Token) (token.Token, error) {
	return token.Token{}, errors.New("no token source")
}

func (d *doctor) checkUpstream(ctx context.Context) {
	c := Check{Step: stepUpstream, Name: "upstream", Target: d.cfg.Upstream}
	var ts token.Source = noToken{}
	if d.src != nil {
		ts = d.src
	}
	up, err := upstream.New(upstream.Options{
		Addr:           d.cfg.Upstream,
		RootCAs:        d.o.RootCAs,
		Tokens:         ts,
		HelloName:      d.cfg.Hostname,
		Clock:          d.o.Clock,
		Logger:         d.o.Logger.Named("upstream"),
		ConnectTimeout: d.o.Timeout,
		CommandTimeout: d.o.Timeout,
		PoolDisabled:   true,
	})
	if err != nil {
		c.Status, c.Message = Fail, oneLine(err.Error())
		c.Fix = "Set O365RELAY_UPSTREAM to " + config.DefaultUpstream + "."
		d.add(c)
		return
	}
	d.up = up
	pctx, cancel := context.WithTimeout(ctx, d.o.Timeout)
	defer cancel()
	res, perr := up.ProbeTLS(pctx)
	c.Details = map[string]string{}
	if res.PeerSubject != "" {
		c.Details["certificate_subject"] = res.PeerSubject
		c.Details["certificate_issuer"] = res.PeerIssuer
		c.Details["certificate_not_after"] = res.PeerNotAfter.UTC().Format(time.RFC3339)
	}
	if perr == nil {
		d.tlsOK = true
		c.Status = OK
		c.Details["tls_version"] = res.TLSVersion
		c.Details["cipher_suite"] = res.CipherSuite
		c.Message = fmt.Sprintf("%s reachable, STARTTLS, %s (%s), certificate %s issued by %s verified for %s, valid until %s",
			d.cfg.Upstream, res.TLSVersion, res.CipherSuite, res.PeerSubject, res.PeerIssuer, res.ServerName, res.PeerNotAfter.UTC().Format("2006-01-02"))
		d.add(c)
		return
	}
	c.Status = Fail
	f := res.Failed()
	host := res.ServerName
	switch {
	case f != nil && f.Name == upstream.StepConnect:
		c.Message = oneLine(f.Err.Error())
		c.Fix = "Allow outbound TCP to " + d.cfg.Upstream + " (many networks and cloud providers block SMTP ports; 587 is submission), and check O365RELAY_UPSTREAM and DNS."
	case f != nil && f.Name == upstream.StepTLS:
		c.Message = oneLine(f.Err.Error())
		if res.PeerSubject != "" {
			c.Message += fmt.Sprintf(" (presented: %s, issued by %s)", res.PeerSubject, res.PeerIssuer)
		}
		if h := upstream.AuthHint(f.Err); h != "" {
			c.Message += " — " + h
		}
		c.Fix = "Something between this host and " + host + " answers TLS with its own certificate: exempt " + host + ":587 from TLS inspection on the proxy or firewall, " +
			"or, if that inspection is intended, add its CA certificate to the system trust store or to the file SSL_CERT_FILE names.\n" +
			"See what is presented: openssl s_client -starttls smtp -connect " + d.cfg.Upstream + " -servername " + host + " </dev/null | openssl x509 -noout -subject -issuer"
	default:
		c.Message = oneLine(perr.Error())
	}
	d.add(c)
}

// --- 6. AUTH per mailbox ---------------------------------------------------

func (d *doctor) checkAuth(ctx context.Context) {
	if len(d.o.Mailboxes) == 0 {
		d.skip(stepAuth, "auth", "", "no mailbox is configured ("+checkRef(stepConfig)+")")
		return
	}
	type outcome struct {
		mailbox string
		err     *upstream.ProbeStep
	}
	var results []outcome
	for _, mb := range d.o.Mailboxes {
		switch {
		case d.tok == nil:
			d.skip(stepAuth, "auth", mb, "no token ("+checkRef(stepToken)+")")
			continue
		case !d.tlsOK:
			d.skip(stepAuth, "auth", mb, "the upstream TLS session failed ("+checkRef(stepUpstream)+")")
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, d.o.Timeout)
		res, err := d.up.Probe(pctx, mb)
		cancel()
		o := outcome{mailbox: mb}
		if err != nil {
			o.err = res.Failed()
			if o.err == nil {
				o.err = &upstream.ProbeStep{Name: "probe"}
			}
		}
		results = append(results, o)
	}
	anyOK := false
	for _, r := range results {
		anyOK = anyOK || r.err == nil
	}
	for _, r := range results {
		c := Check{Step: stepAuth, Name: "auth", Target: r.mailbox}
		if r.err == nil {
			c.Status = OK
			c.Message = fmt.Sprintf("AUTH XOAUTH2 as %s accepted (235); no mail was sent", r.mailbox)
			d.add(c)
			continue
		}
		c.Status = Fail
		re := r.err.Err
		if re == nil {
			c.Message = "probe failed at " + r.err.Name
			d.add(c)
			continue
		}
		c.Message = fmt.Sprintf("AUTH XOAUTH2 as %s: %s", r.mailbox, oneLine(re.Error()))
		switch {
		case re.Code == 535 && re.Enhanced == [3]int{5, 7, 139}:
			c.AzureSteps = azureSteps(azurestep.SMTPAuth)
			c.Message += " — " + upstream.AuthHint(re)
			c.Fix = "Connect-ExchangeOnline -Organization " + d.cfg.TenantID + "\n" +
				"Set-CASMailbox -Identity " + r.mailbox + " -SmtpClientAuthenticationDisabled $false\n" +
				"If SMTP AUTH is off for the whole tenant: Set-TransportConfig -SmtpClientAuthenticationDisabled $false (the per-mailbox setting wins over it).\n" +
				"Security Defaults block SMTP AUTH: Entra ID → Overview → Properties → Manage security defaults → Disabled (replace them with Conditional Access policies)."
		case re.Code == 535:
			c.Message += " — " + d.authFailureHint(anyOK)
			c.AzureSteps, c.Fix = d.authFailureFix(r.mailbox, anyOK)
		default:
			if h := upstream.AuthHint(re); h != "" {
				c.Message += " — " + h
			}
		}
		d.add(c)
	}
}

// authFailureHint narrows 535 5.7.3, which Exchange gives for every
// authorization failure, with what the doctor knows: the token's role and
// whether another mailbox worked (then the service principal is
// registered and only this mailbox's permission is missing).
func (d *doctor) authFailureHint(anyOK bool) string {
	switch {
	case d.managedIdentity() && d.claims != nil && !d.claims.HasRole(RoleSendAsApp) && !anyOK:
		return "the token has no " + RoleSendAsApp + " role (" + checkRef(stepClaims) + "): the managed identity has no app role assignment on Office 365 Exchange Online; then Exchange needs its service principal and the mailbox permission"
	case d.claims != nil && !d.claims.HasRole(RoleSendAsApp) && !anyOK:
		return "the token has no " + RoleSendAsApp + " role (" + checkRef(stepClaims) + "): admin consent was not granted (" + azurestep.SendAsAppConsent.String() + "), or, with RBAC for Applications, the role assignment is missing; then the service principal and mailbox permission (" +
			azurestep.List(azurestep.NewServicePrincipal, azurestep.AddMailboxPermission) + ")"
	case anyOK:
		return "the app authenticates as another mailbox, so its service principal is registered: this mailbox lacks Add-MailboxPermission (" + azurestep.AddMailboxPermission.String() + ")"
	}
	return "the token is valid but Exchange does not let this app use this mailbox: New-ServicePrincipal with the Enterprise application's object ID (" + azurestep.NewServicePrincipal.String() +
		") or Add-MailboxPermission for this mailbox (" + azurestep.AddMailboxPermission.String() + ") is missing"
}

func (d *doctor) authFailureFix(mailbox string, anyOK bool) ([]int, string) {
	connect := "Connect-ExchangeOnline -Organization " + d.tenantID()
	sp := "New-ServicePrincipal -AppId " + d.appID() + " -ObjectId " + d.objectID() + " -Organization " + d.tenantID()
	perm := "Add-MailboxPermission -Identity " + mailbox + " -User " + d.objectID() + " -AccessRights FullAccess"
	note := "The object ID is the Enterprise application's (service principal's)"
	if d.claims != nil && d.claims.ObjectID != "" {
		note += ", read from the token's oid claim"
	}
	note += ", not the one on the app registration's Overview page. Exchange takes a few minutes to apply a new permission; then run o365relay doctor again."
	if d.managedIdentity() {
		note = d.miExchangeNote()
	}
	if anyOK {
		return azureSteps(azurestep.AddMailboxPermission), connect + "\n" + perm + "\n" + note
	}
	steps := azureSteps(azurestep.NewServicePrincipal, azurestep.AddMailboxPermission)
	fix := ""
	if d.claims != nil && !d.claims.HasRole(RoleSendAsApp) {
		steps = azureSteps(azurestep.SendAsAppConsent, azurestep.NewServicePrincipal, azurestep.AddMailboxPermission)
		fix = d.consentFix() + "\n"
	}
	fix += "In Exchange Online PowerShell (Install-Module ExchangeOnlineManagement):\n" + connect + "\n" + sp + "\n" + perm + "\n" + note
	return steps, fix
}

// --- helpers -------------------------------------------------------------------

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func orUnknown(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if strings.EqualFold(strings.TrimSuffix(x, "/"), strings.TrimSuffix(v, "/")) {
			return true
		}
	}
	return false
}

func isGUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, r := range s {
		switch i {
		case 8, 13, 18, 23:
			if r != '-' {
				return false
			}
		default:
			if !strings.ContainsRune("0123456789abcdefABCDEF", r) {
				return false
			}
		}
	}
	return true
}

// sanitizeURLError drops the URL from an http.Client error: it carries no
// secret here, but the host is already in the message and the full URL is
// noise.
func sanitizeURLError(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
}
