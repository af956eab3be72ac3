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
// One file per group of checks: configuration.go (1), credential.go and
// managedidentity.go (2), token.go (3), claims.go (4), upstream.go (5),
// auth.go (6), local.go (7); troubleshooting.go is the README's table of
// what each line means.
package doctor

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
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

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
