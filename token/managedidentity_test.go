package token

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/managedidentity"
	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/o365relay/o365relay/config/waitfor"
	"github.com/o365relay/o365relay/token/entratest"
	"github.com/o365relay/o365relay/token/mitest"
)

// The identities of the imitated VM or app.
var (
	miSystem = mitest.Identity{ClientID: "5a5a5a5a-0000-4000-8000-000000000001", ObjectID: "5a5a5a5a-0000-4000-8000-0000000000a1",
		ResourceID: "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/mail/providers/Microsoft.Compute/virtualMachines/relay-vm",
		Roles:      []string{"SMTP.SendAsApp"}}
	miUser = mitest.Identity{ClientID: "5a5a5a5a-0000-4000-8000-000000000002", ObjectID: "5a5a5a5a-0000-4000-8000-0000000000a2",
		ResourceID: "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/mail/providers/Microsoft.ManagedIdentity/userAssignedIdentities/o365relay",
		Roles:      []string{"SMTP.SendAsApp"}}
)

// miEntra is one fake Entra ID for every managed-identity test (RSA key
// generation dominates their time); they only ask it to sign tokens, with
// lifetimes of their own. The process's exit closes it.
var miEntra = sync.OnceValues(func() (*entratest.Server, error) { return entratest.NewServer(entratest.Options{}) })

// miFixture is a fake Entra ID and a fake managed-identity endpoint of one
// source, with MSAL's source-selecting environment set for it (so tests
// using it cannot run in parallel: MSAL reads the process environment).
type miFixture struct {
	entra *entratest.Server
	mi    *mitest.Server
}

func newMIFixture(t *testing.T, src mitest.Source, mod ...func(*mitest.Options)) *miFixture {
	t.Helper()
	entra, err := miEntra()
	if err != nil {
		t.Fatal(err)
	}
	sys := miSystem
	o := mitest.Options{Source: src, Entra: entra, SystemAssigned: &sys, UserAssigned: []mitest.Identity{miUser}}
	for _, m := range mod {
		m(&o)
	}
	mi := mitest.Start(t, o)
	mi.SetEnv(t)
	want := map[mitest.Source]managedidentity.Source{mitest.IMDS: managedidentity.DefaultToIMDS, mitest.AppService: managedidentity.AppService, mitest.Arc: managedidentity.AzureArc}[src]
	if got, err := managedidentity.GetSource(); err != nil || got != want {
		// E.g. IMDS on a machine with the Arc agent installed.
		t.Skipf("MSAL picks %s here, not %s (%v)", got, want, err)
	}
	return &miFixture{entra: entra, mi: mi}
}

func (f *miFixture) source(t *testing.T, m ManagedIdentity, mod ...func(*Options)) *EntraSource {
	t.Helper()
	o := Options{Credential: Credential{ManagedIdentity: &m}, Scope: entratest.Scope, HTTPClient: f.mi.Client()}
	for _, fn := range mod {
		fn(&o)
	}
	s, err := NewSource(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// verify checks the token with Entra's key, as the fake Exchange does, and
// that it is the identity's.
func (f *miFixture) verify(t *testing.T, tok Token, id mitest.Identity) {
	t.Helper()
	claims := jwt.MapClaims{}
	if _, err := jwt.ParseWithClaims(tok.Value.Reveal(), claims, func(*jwt.Token) (any, error) { return f.entra.PublicKey(), nil },
		jwt.WithValidMethods([]string{"RS256"}), jwt.WithAudience(entratest.Audience), jwt.WithExpirationRequired()); err != nil {
		t.Fatalf("token does not verify: %v", err)
	}
	cl, err := ParseClaims(tok)
	if err != nil {
		t.Fatal(err)
	}
	if cl.AppID != id.ClientID || cl.ObjectID != id.ObjectID || cl.ManagedIdentityResourceID != id.ResourceID ||
		cl.TenantID != f.entra.Tenant() || !cl.HasRole("SMTP.SendAsApp") {
		t.Fatalf("claims %+v, want identity %+v", cl, id)
	}
}

// Through MSAL, for each source the relay can be tested against (IMDS via
// the HTTP client option, App Service via its environment variables) and
// each way of naming the identity: the request carries the source's
// api-version, headers and selector (the fake refuses anything else), the
// token is the identity's, a second Token is served from the source's
// cache, and Refresh after a rejection makes exactly one new request.
func TestManagedIdentitySources(t *testing.T) {
	for _, src := range []mitest.Source{mitest.IMDS, mitest.AppService} {
		resParam := map[mitest.Source]string{mitest.IMDS: "msi_res_id", mitest.AppService: "mi_res_id"}[src]
		for _, tc := range []struct {
			name  string
			m     ManagedIdentity
			id    mitest.Identity
			param string
		}{
			{"system-assigned", ManagedIdentity{}, miSystem, ""},
			{"user-assigned by client ID", ManagedIdentity{ClientID: miUser.ClientID}, miUser, "client_id"},
			{"user-assigned by resource ID", ManagedIdentity{ResourceID: miUser.ResourceID}, miUser, resParam},
		} {
			t.Run(string(src)+"/"+tc.name, func(t *testing.T) {
				f := newMIFixture(t, src)
				s := f.source(t, tc.m)
				tok, err := s.Token(ctxT(t))
				if err != nil {
					t.Fatal(err)
				}
				f.verify(t, tok, tc.id)
				if life := time.Until(tok.ExpiresOn); life < 23*time.Hour || life > 24*time.Hour {
					t.Errorf("token lifetime %v, want the endpoint's 24 h", life)
				}
				req := f.mi.Requests()[0]
				if req.Outcome != "ok" || req.Query.Get("resource") != "https://outlook.office365.com" {
					t.Errorf("request %+v", req)
				}
				if tc.param != "" && req.Query.Get(tc.param) == "" {
					t.Errorf("identity not selected with %s: %v", tc.param, req.Query)
				}
				again, err := s.Token(ctxT(t))
				if err != nil || again != tok || f.mi.Issued() != 1 {
					t.Fatalf("second Token: %v, issued %d", err, f.mi.Issued())
				}
				fresh, err := s.Refresh(ctxT(t), tok)
				if err != nil || fresh.Value == tok.Value || f.mi.Issued() != 2 {
					t.Fatalf("Refresh: %v, new=%v, issued %d", err, fresh.Value != tok.Value, f.mi.Issued())
				}
				f.verify(t, fresh, tc.id)
			})
		}
	}
}

// The shared mechanism with a managed identity: one request for many cold
// callers; Run refreshes before expiry; during an endpoint outage the held
// token is served and the source backs off, with MSAL's own retries (3
// tries for IMDS) the only repetition inside one attempt; the metrics
// count the outcome.
func TestManagedIdentityCacheRefreshOutage(t *testing.T) {
	f := newMIFixture(t, mitest.IMDS, func(o *mitest.Options) { o.Lifetime = 4 * time.Second })
	logger, logs := waitfor.NewLogs(zap.DebugLevel)
	s := f.source(t, ManagedIdentity{}, func(o *Options) { o.Logger = logger })
	acquired := waitfor.Message("token acquired")

	const n = 20
	first := coldCallers(t, s, n)
	if got := f.mi.Issued(); got != 1 {
		t.Fatalf("%d tokens issued for %d cold callers", got, n)
	}
	logs.Wait(t, "the first token", acquired)

	// Run refreshes at half-life (4 s lifetime: 2 s in). Real time: the
	// endpoint is an HTTP server, which a synctest bubble cannot isolate
	// (run_test.go tests Run's schedule exactly with a scripted request).
	ctx, cancel := context.WithCancel(ctxT(t))
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	logs.WaitN(t, "Run's refresh", 2, acquired)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	refreshed, err := s.Token(ctxT(t))
	if err != nil || refreshed.Value == first.Value || f.mi.Issued() != 2 {
		t.Fatalf("after Run: %v, issued %d", err, f.mi.Issued())
	}
	// The outage below outlasts MSAL's retries (2 s and more on a busy
	// machine): hold a token that lives through it. Run's request may
	// still be finishing (its log line comes first, and a cancelled Run
	// does not wait for it); a Refresh then joins it (single flight) and
	// gets the same token: ask until a request of its own answers.
	f.mi.SetLifetime(time.Hour)
	var held Token
	waitfor.Check(t, "a token that lives through the outage", func() error {
		var err error
		if held, err = s.Refresh(ctxT(t), refreshed); err == nil && held.Value == refreshed.Value {
			return errors.New("Refresh joined the request in flight")
		}
		return err
	})

	before := testutil.ToFloat64(requestsTotal.WithLabelValues("failure", "http_503"))
	f.mi.SetOutage(503)
	reqs := len(f.mi.Requests())
	_, err = s.Refresh(ctxT(t), held)
	ee := entraErr(t, err)
	if !ee.Temporary() || errors.Is(err, ErrNoManagedIdentityEndpoint) {
		t.Fatalf("outage: %v", ee)
	}
	if tries := len(f.mi.Requests()) - reqs; tries < 1 || tries > 3 {
		t.Fatalf("%d requests for one attempt; MSAL tries IMDS at most 3 times", tries)
	}
	if after := testutil.ToFloat64(requestsTotal.WithLabelValues("failure", "http_503")); after < before+1 {
		t.Errorf("failure counter %v → %v", before, after)
	}
	reqs = len(f.mi.Requests())
	for range 50 {
		tok, err := s.Token(ctxT(t))
		if err != nil || tok != held {
			t.Fatalf("Token during the outage: %v", err)
		}
		if _, err := s.Refresh(ctxT(t), held); err == nil {
			t.Fatal("Refresh during the backoff succeeded")
		}
	}
	if got := len(f.mi.Requests()) - reqs; got != 0 {
		t.Fatalf("%d requests during the backoff", got)
	}
	if st := s.Status(); !st.HasToken || st.LastError == nil {
		t.Fatalf("status %+v", st)
	}
	// Back: the next attempt after the backoff gets a token.
	f.mi.SetOutage(0)
	s.mu.Lock()
	s.nextAttempt = time.Time{}
	s.mu.Unlock()
	if tok, err := s.Refresh(ctxT(t), held); err != nil || tok.Value == held.Value {
		t.Fatalf("after the outage: %v", err)
	}
}

// Each failure a user can cause is classed and explained: no endpoint
// (not on Azure, Arc agent missing), identity not assigned (system-assigned
// off, user-assigned not attached), and Entra's own refusal forwarded.
func TestManagedIdentityFailuresExplained(t *testing.T) {
	closed := closedPort(t)
	cases := []struct {
		name  string
		src   mitest.Source
		mod   func(*mitest.Options)
		m     ManagedIdentity
		env   []string // overrides after the fixture's
		scope string
		is    error
		code  int
		want  []string
	}{
		{name: "IMDS, system-assigned off", src: mitest.IMDS, mod: func(o *mitest.Options) { o.SystemAssigned = nil },
			is: ErrManagedIdentityNotFound, want: []string{"Identity not found", "system-assigned identity of this VM is off", "Identity → System assigned → On"}},
		{name: "IMDS, user-assigned not attached", src: mitest.IMDS, m: ManagedIdentity{ClientID: "0000dead-0000-4000-8000-000000000000"},
			is: ErrManagedIdentityNotFound, want: []string{"user-assigned identity (user-assigned, client ID 0000dead-", "is not assigned to this VM", "AZURE_CLIENT_ID"}},
		{name: "App Service, user-assigned not attached", src: mitest.AppService, m: ManagedIdentity{ResourceID: miUser.ResourceID + "x"},
			is: ErrManagedIdentityNotFound, want: []string{"Unable to load the proper Managed Identity", "not assigned to this app"}},
		{name: "App Service, endpoint down", src: mitest.AppService, env: []string{"IDENTITY_ENDPOINT=http://" + closed + "/msi/token"},
			is: ErrNoManagedIdentityEndpoint, want: []string{"no managed identity endpoint answered at http://" + closed + "/msi/token (App Service)", "connection refused"}},
		{name: "Arc agent not running", src: mitest.AppService, env: []string{"IDENTITY_HEADER=", "IDENTITY_ENDPOINT=http://" + closed + "/metadata/identity/oauth2/token", "IMDS_ENDPOINT=http://" + closed},
			is: ErrNoManagedIdentityEndpoint, want: []string{"(Azure Arc)", "himdsd", "azcmagent connect"}},
		{name: "wrong resource, forwarded from Entra", src: mitest.IMDS, scope: "https://graph.microsoft.com/.default",
			code: 500011, want: []string{"AADSTS500011", "scope must be https://outlook.office365.com/.default"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var mods []func(*mitest.Options)
			if tc.mod != nil {
				mods = append(mods, tc.mod)
			}
			f := newMIFixture(t, tc.src, mods...)
			for _, kv := range tc.env {
				k, v, _ := strings.Cut(kv, "=")
				t.Setenv(k, v)
			}
			s := f.source(t, tc.m, func(o *Options) {
				if tc.scope != "" {
					o.Scope = tc.scope
				}
			})
			_, err := s.Token(ctxT(t))
			ee := entraErr(t, err)
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("errors.Is(%v) false: %v", tc.is, ee)
			}
			if ee.Code() != tc.code {
				t.Errorf("code %d, want %d", ee.Code(), tc.code)
			}
			for _, w := range tc.want {
				if !strings.Contains(ee.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, ee)
				}
			}
			if strings.Contains(ee.Error(), f.mi.Header()) {
				t.Error("the App Service identity header leaked into the error")
			}
		})
	}
}

// A managed identity cannot be combined with another credential, and a
// user-assigned one is named one way only.
func TestManagedIdentityCredentialValidation(t *testing.T) {
	if _, err := NewSource(Options{Scope: entratest.Scope, Credential: Credential{ManagedIdentity: &ManagedIdentity{}, ClientSecret: "x"}}); err == nil || !strings.Contains(err.Error(), "2 set") {
		t.Errorf("managed identity + secret: %v", err)
	}
	if _, err := NewSource(Options{Scope: entratest.Scope, Credential: Credential{ManagedIdentity: &ManagedIdentity{ClientID: "a", ResourceID: "/b"}}}); err == nil || !strings.Contains(err.Error(), "not both") {
		t.Errorf("client ID + resource ID: %v", err)
	}
}

// closedPort is a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// MSAL's Arc challenge errors are plain errors: each of its texts
// (managedidentity.go getAzureArcSecretKey, acquireTokenForAzureArc) is
// classed as the challenge failing, with the himds fix.
func TestArcChallengeErrorsExplained(t *testing.T) {
	for _, msg := range []string{
		"response has no www-authenticate header",
		"basic realm= not found in the string, instead found: Bearer",
		"invalid file extension, expected .key, got .txt",
		"invalid file path, expected /var/opt/azcmagent/tokens, got /tmp",
		"failed to get metadata for /var/opt/azcmagent/tokens/a.key due to error: stat: no such file or directory",
		"invalid secret file size, expected 4096, file size was 5000",
		`failed to read "/var/opt/azcmagent/tokens/a.key" due to error: open /var/opt/azcmagent/tokens/a.key: permission denied`,
		"expected a 401 response, received 200",
	} {
		err := errors.New(msg)
		ee := explainManagedIdentity(err, "Azure Arc", "http://127.0.0.1:40342/metadata/identity/oauth2/token", ManagedIdentity{})
		if !errors.Is(ee, ErrArcChallenge) || !strings.Contains(ee.Error(), "himds group") {
			t.Errorf("%q → %v", msg, ee)
		}
		if fix := ManagedIdentityFix(ee, ManagedIdentity{}); !strings.Contains(fix, "usermod -aG himds") {
			t.Errorf("%q: fix %q", msg, fix)
		}
	}
}
