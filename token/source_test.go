package token

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"software.sslmate.com/src/go-pkcs12"

	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/config/secret"
	"github.com/o365relay/o365relay/config/tlstest"
	"github.com/o365relay/o365relay/token/entratest"
)

// Every credential form, loaded from a file where it is one, gets a token
// the fake verifies, carrying the claims Exchange looks at.
func TestEachCredentialFormGetsAToken(t *testing.T) {
	t.Parallel()
	tc := certs(t)[0]
	pkcs8, err := tlstest.PKCS8PEM(tc.key)
	if err != nil {
		t.Fatal(err)
	}
	pfx, err := pkcs12.Modern.Encode(tc.key, tc.cert, nil, "pfx-pass")
	if err != nil {
		t.Fatal(err)
	}
	load := func(path string, pw secret.Secret) func(t *testing.T) Credential {
		return func(t *testing.T) Credential {
			c, err := LoadCertificate(path, pw)
			if err != nil {
				t.Fatal(err)
			}
			return Credential{Certificate: c}
		}
	}
	cases := []struct {
		name string
		cred func(t *testing.T) Credential
	}{
		{"PEM PKCS1", load(pemFile(t, tlstest.CertPEM(tc.cert), tlstest.PKCS1PEM(tc.key)), "")},
		{"PEM PKCS8", load(pemFile(t, tlstest.CertPEM(tc.cert), pkcs8), "")},
		{"encrypted PKCS8 PEM", load(pemFile(t, tlstest.CertPEM(tc.cert), encryptPKCS8(t, tc.key, "pw", 1000)), "pw")},
		{"PFX", load(writeFile(t, "c.pfx", pfx), "pfx-pass")},
		{"PEM PKCS1 RS256+x5t with x5c", func(t *testing.T) Credential {
			c := load(pemFile(t, tlstest.CertPEM(tc.cert), tlstest.PKCS1PEM(tc.key)), "")(t)
			c.Algorithm, c.SendX5C = RS256, true
			return c
		}},
		{"client secret", func(*testing.T) Credential { return Credential{ClientSecret: "s3cr3t~value"} }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			s := f.source(t, c.cred(t))
			tok, err := s.Token(ctxT(t))
			if err != nil {
				t.Fatal(err)
			}
			f.verifyAccessToken(t, tok)
			if n := f.srv.TokenRequests(); n != 1 {
				t.Fatalf("%d token requests", n)
			}
			// Steady state: cached, no network.
			again, err := s.Token(ctxT(t))
			if err != nil || again != tok || f.srv.TokenRequests() != 1 {
				t.Fatalf("second Token: %v, same=%v, requests=%d", err, again == tok, f.srv.TokenRequests())
			}
			st := s.Status()
			if !st.HasToken || !st.EverSucceeded || st.LastError != nil || !st.ExpiresOn.Equal(tok.ExpiresOn) {
				t.Fatalf("status %+v", st)
			}
			claims, err := ParseClaims(tok)
			if err != nil {
				t.Fatal(err)
			}
			if claims.AppID != testClientID || claims.TenantID != f.srv.Tenant() || claims.ObjectID != testObjectID ||
				!claims.HasRole("SMTP.SendAsApp") || len(claims.Audience) != 1 || claims.Audience[0] != entratest.Audience ||
				claims.Issuer != "https://sts.windows.net/"+f.srv.Tenant()+"/" || claims.ExpiresAt.IsZero() {
				t.Fatalf("claims %+v", claims)
			}
			for _, h := range f.guard.seen() {
				if h != f.guard.allow {
					t.Fatalf("request to %s", h)
				}
			}
		})
	}
}

// k8sToken is a workload-identity service account token.
func k8sToken(t *testing.T, key *rsa.PrivateKey, sub string) []byte {
	t.Helper()
	now := time.Now()
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{
		"iss": "https://oidc.example.test/cluster", "sub": sub, "aud": []string{entratest.DefaultFederatedAudience},
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(), "jti": sub + now.String(),
	})
	tok.Header["kid"] = "cluster-key"
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return []byte(s + "\n")
}

func TestFederatedTokenFileIsReadForEveryRequest(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	cluster := certs(t)[2].key
	const sub = "system:serviceaccount:mail:o365relay"
	f.srv.AddApp(entratest.App{ClientID: testClientID, ObjectID: testObjectID, Roles: []string{"SMTP.SendAsApp"},
		Federated: []entratest.Federated{{Issuer: "https://oidc.example.test/cluster", Subject: sub, Keys: []crypto.PublicKey{&cluster.PublicKey}}}})
	path := writeFile(t, "azure-identity-token", k8sToken(t, cluster, sub))
	s := f.source(t, Credential{FederatedTokenFile: path})
	tok, err := s.Token(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	f.verifyAccessToken(t, tok)
	// The kubelet rotates the file; here to a token for another service
	// account, which Entra must then refuse — proof the file was re-read.
	if err := os.WriteFile(path, k8sToken(t, cluster, "system:serviceaccount:other:sa"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = s.Refresh(ctxT(t), tok)
	ee := entraErr(t, err)
	if ee.Code() != 70021 || ee.Temporary() {
		t.Fatalf("got %v", ee)
	}
	if step, _ := Explain(70021); step != 3 {
		t.Fatalf("step %d", step)
	}
}

// entraErr checks the error contract: a token failure is an *EntraError,
// returned as itself.
func entraErr(t *testing.T, err error) *EntraError {
	t.Helper()
	if err == nil {
		t.Fatal("no error")
	}
	ee, ok := err.(*EntraError)
	if !ok {
		t.Fatalf("not an *EntraError: %#v", err)
	}
	return ee
}

func TestConfigurationErrorsAreExplained(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		mod  func(f *fixture, o *Options)
		code int
		want []string
	}{
		{"unregistered certificate", func(f *fixture, o *Options) { o.Credential = f.certCred(t, 1) }, 700027,
			[]string{"AADSTS700027: ", "not registered on the app (Certificates & secrets → Upload certificate)", "uploaded less than ~2 minutes ago", "thumbprint"}},
		{"unknown client", func(_ *fixture, o *Options) { o.ClientID = "00000000-dead-beef-0000-000000000000" }, 700016,
			[]string{"AADSTS700016: Application with identifier", "Application (client) ID", "Azure step 1: register the app"}},
		{"unknown tenant", func(_ *fixture, o *Options) { o.TenantID = "contoso.example" }, 90002,
			[]string{"AADSTS90002: Tenant 'contoso.example' not found", "Directory (tenant) ID"}},
		{"wrong secret", func(_ *fixture, o *Options) { o.Credential = Credential{ClientSecret: "wrong-secret-value"} }, 7000215,
			[]string{"AADSTS7000215", "not its Secret ID"}},
		{"graph scope", func(_ *fixture, o *Options) { o.Scope = "https://graph.microsoft.com/.default" }, 500011,
			[]string{"AADSTS500011", "https://outlook.office365.com/.default"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			core, logs := observer.New(zap.DebugLevel)
			s := f.source(t, f.certCred(t, 0), func(o *Options) { c.mod(f, o); o.Logger = zap.New(core) })
			_, err := s.Token(ctxT(t))
			ee := entraErr(t, err)
			if ee.Code() != c.code || ee.Temporary() || ee.HTTPStatus < 400 || ee.OAuthError == "" {
				t.Fatalf("got %+v", ee)
			}
			for _, w := range c.want {
				if !strings.Contains(ee.Error(), w) {
					t.Errorf("%q lacks %q", ee.Error(), w)
				}
			}
			if strings.Contains(ee.Description, "Trace ID") || strings.Contains(ee.Description, "\n") {
				t.Errorf("description keeps trace lines: %q", ee.Description)
			}
			if st := s.Status(); st.LastError == nil || st.HasToken || st.EverSucceeded {
				t.Errorf("status %+v", st)
			}
			// Logged once, as a failure that a retry does not cure,
			// with its code.
			failed := logs.FilterField(zap.Bool("temporary", false)).All()
			if len(failed) != 1 || !strings.Contains(fmt.Sprint(failed[0].ContextMap()["error"]), fmt.Sprintf("AADSTS%d", c.code)) {
				t.Errorf("failure not logged once with its code: %v", logs.All())
			}
			for _, e := range logs.All() {
				for _, fld := range e.Context {
					if strings.Contains(fld.String, "eyJ") || strings.Contains(fld.String, "wrong-secret-value") {
						t.Errorf("log leaks a secret: %v", fld)
					}
				}
			}
			if strings.Contains(err.Error(), "eyJ") || strings.Contains(err.Error(), "wrong-secret-value") {
				t.Errorf("error leaks a secret: %v", err)
			}
		})
	}
	t.Run("thumbprint in 700027 hint", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		cred := f.certCred(t, 1)
		s := f.source(t, cred)
		_, err := s.Token(ctxT(t))
		if ee := entraErr(t, err); !strings.Contains(ee.Hint, cred.Certificate.ThumbprintSHA1Hex()) {
			t.Fatalf("hint %q lacks the thumbprint", ee.Hint)
		}
	})
}

// Certificate rotation: upload the new certificate, switch to it, remove
// the old one.
func TestCertificateRotation(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	newCred := f.certCred(t, 1)
	if err := f.srv.RegisterCert(testClientID, newCred.Certificate.Leaf); err != nil {
		t.Fatal(err)
	}
	if err := f.srv.RemoveCert(testClientID, certs(t)[0].cert); err != nil {
		t.Fatal(err)
	}
	if _, err := f.source(t, newCred).Token(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	_, err := f.source(t, f.certCred(t, 0)).Token(ctxT(t))
	if ee := entraErr(t, err); ee.Code() != 700027 {
		t.Fatal(ee)
	}
}

func TestColdCacheSingleFlight(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.source(t, f.certCred(t, 0))
	const n = 50
	coldCallers(t, s, n)
	if got := f.srv.TokenRequests(); got != 1 {
		t.Fatalf("%d token requests for %d cold callers", got, n)
	}
}

func TestRefreshReplacesRejectedTokenOnce(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.source(t, f.certCred(t, 0))
	old, err := s.Token(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	const n = 10
	var wg sync.WaitGroup
	got := make([]Token, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { got[i], errs[i] = s.Refresh(ctxT(t), old) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil || got[i].Value == old.Value || got[i] != got[0] {
			t.Fatalf("caller %d: err %v, new=%v", i, errs[i], got[i].Value != old.Value)
		}
	}
	if r := f.srv.TokenRequests(); r != 2 {
		t.Fatalf("%d token requests, want 2", r)
	}
	// A late Refresh for the same rejected token is answered from cache.
	late, err := s.Refresh(ctxT(t), old)
	if err != nil || late != got[0] || f.srv.TokenRequests() != 2 {
		t.Fatalf("late refresh: %v, requests %d", err, f.srv.TokenRequests())
	}
	f.verifyAccessToken(t, late)
}

func TestOutageKeepsHeldTokenAndBacksOff(t *testing.T) {
	t.Parallel()
	for _, mode := range []int{503, entratest.OutageDrop} {
		f := newFixture(t)
		s := f.source(t, f.certCred(t, 0))
		held, err := s.Token(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		f.srv.SetOutage(mode)
		// The 535 path forces a request, which fails...
		_, err = s.Refresh(ctxT(t), held)
		ee := entraErr(t, err)
		if !ee.Temporary() {
			t.Fatalf("outage %d not temporary: %v", mode, ee)
		}
		if f.srv.TokenRequests() != 2 {
			t.Fatalf("requests %d", f.srv.TokenRequests())
		}
		// ...then, during the backoff, callers get the held token or the
		// last error at once, without new requests.
		for range 100 {
			tok, err := s.Token(ctxT(t))
			if err != nil || tok != held {
				t.Fatalf("Token during outage: %v", err)
			}
			if _, err := s.Refresh(ctxT(t), held); err == nil {
				t.Fatal("Refresh during backoff succeeded")
			}
		}
		if got := f.srv.TokenRequests(); got != 2 {
			t.Fatalf("%d token requests during backoff, want 2", got)
		}
		if st := s.Status(); !st.HasToken || st.LastError == nil || !st.NextRefresh.After(time.Now()) {
			t.Fatalf("status %+v", st)
		}
	}
}

func TestBackoffSchedule(t *testing.T) {
	t.Parallel()
	s := &EntraSource{backoffMin: time.Second, backoffMax: 5 * time.Minute}
	for i, want := range []time.Duration{1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300} {
		s.failures = i + 1
		want *= time.Second
		for range 20 {
			if d := s.backoffLocked(); d < want/2 || d > want {
				t.Fatalf("failure %d: %v not in [%v, %v]", i+1, d, want/2, want)
			}
		}
	}
}

func TestRefreshRule(t *testing.T) {
	t.Parallel()
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		life, refreshIn, wantAfter time.Duration
	}{
		{75 * time.Minute, 0, 50 * time.Minute},  // lead 25 min
		{60 * time.Minute, 0, 40 * time.Minute},  // lead 20 min
		{24 * time.Hour, 0, 16 * time.Hour},      // lead 8 h
		{20 * time.Minute, 0, 10 * time.Minute},  // lead 10 min (= L/2)
		{7 * time.Minute, 0, 210 * time.Second},  // half-life
		{24 * time.Hour, time.Hour, time.Hour},   // refresh_in wins
		{0, 0, minRefreshInterval},               // never spin
		{30 * time.Minute, 0, 20 * time.Minute},  // lead max(10, 10) = 10 min
		{90 * time.Minute, 0, 60 * time.Minute},  // lead 30 min
		{15 * time.Minute, 0, 450 * time.Second}, // L/2 caps the 10 min
	}
	for _, c := range cases {
		s := &EntraSource{tok: Token{Value: "x", ExpiresOn: base.Add(c.life)}, obtained: base, lastRefresh: base}
		if c.refreshIn > 0 {
			s.refreshOn = base.Add(c.refreshIn)
		}
		if got := s.nextRefreshLocked(base).Sub(base); got != c.wantAfter {
			t.Errorf("lifetime %v refresh_in %v: refresh after %v, want %v", c.life, c.refreshIn, got, c.wantAfter)
		}
	}
}

// A custom (non-Microsoft) authority host: MSAL's instance discovery would
// ask login.microsoftonline.com; nothing may leave for any other host.
func TestCustomAuthorityHostStaysOnHost(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.source(t, f.certCred(t, 0))
	if _, err := s.Token(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	seen := f.guard.seen()
	if len(seen) < 2 { // openid-configuration + token
		t.Fatalf("requests: %v", seen)
	}
	for _, h := range seen {
		if h != f.guard.allow {
			t.Fatalf("request to foreign host %s (all: %v)", h, seen)
		}
	}
}

// With Microsoft's host, instance discovery stays on and goes to that same
// host (docs/entra.md#endpoint-discovery); the fake answers it via a rewrite.
func TestMicrosoftAuthorityHostUsesDiscoveryOnSameHost(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.guard.rewrite = "login.microsoftonline.com"
	s := f.source(t, f.certCred(t, 0), func(o *Options) { o.AuthorityHost = config.DefaultAuthorityHost })
	if _, err := s.Token(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	var discovery bool
	for _, r := range f.srv.Requests() {
		discovery = discovery || r.Path == "/common/discovery/instance"
	}
	if !discovery {
		t.Fatalf("no instance discovery: %v", f.srv.Requests())
	}
	for _, h := range f.guard.seen() {
		if h != "login.microsoftonline.com" {
			t.Fatalf("request to %s", h)
		}
	}
}

func TestNewSourceValidates(t *testing.T) {
	t.Parallel()
	cred := Credential{ClientSecret: "x"}
	cases := []Options{
		{TenantID: "t", ClientID: "c"},
		{TenantID: "t", ClientID: "c", Credential: Credential{ClientSecret: "x", FederatedTokenFile: "/f"}},
		{TenantID: "common", ClientID: "c", Credential: cred},
		{TenantID: "t", Credential: cred},
		{TenantID: "t", ClientID: "c", Credential: cred, AuthorityHost: "http://login.example/"},
		{TenantID: "t", ClientID: "c", Credential: cred, Scope: "https://outlook.office365.com/SMTP.Send"},
	}
	for i, o := range cases {
		if o.Scope == "" {
			o.Scope = config.DefaultScope // each case is wrong in one other way
		}
		if _, err := NewSource(o); err == nil {
			t.Errorf("case %d accepted", i)
		}
	}
}

func TestMetrics(t *testing.T) {
	// The counters are package-level and other tests run in parallel, so
	// assert increases, not values.
	t.Parallel()
	f := newFixture(t)
	before := testutil.ToFloat64(requestsTotal.WithLabelValues("failure", "700016"))
	s := f.source(t, f.certCred(t, 0), func(o *Options) { o.ClientID = "nope" })
	if _, err := s.Token(ctxT(t)); err == nil {
		t.Fatal("no error")
	}
	if after := testutil.ToFloat64(requestsTotal.WithLabelValues("failure", "700016")); after < before+1 {
		t.Fatalf("failure counter %v → %v", before, after)
	}
	if len(Collectors()) != 4 {
		t.Fatal("collectors")
	}
	ok := f.source(t, f.certCred(t, 0))
	tok, err := ok.Token(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if v := testutil.ToFloat64(expiryTimestamp); v <= 0 || v > float64(tok.ExpiresOn.Add(time.Hour).Unix()) {
		t.Fatalf("expiry gauge %v", v)
	}
}

func TestExplainCoversSetupCodes(t *testing.T) {
	t.Parallel()
	for _, c := range []int{700016, 90002, 700027, 700024, 7000215, 7000222, 70021, 7000218, 50012, 500011, 70011, 1002012, 9001023, 5002738, 50196, 90055} {
		if _, hint := Explain(c); hint == "" {
			t.Errorf("AADSTS%d unexplained", c)
		}
	}
	if step, _ := Explain(700027); step != 3 {
		t.Errorf("700027 → step %d", step)
	}
	if step, _ := Explain(700016); step != 1 {
		t.Errorf("700016 → step %d", step)
	}
	if s, h := Explain(1); s != 0 || h != "" {
		t.Error("unknown code explained")
	}
}

func TestSanitizeScrubsJWTs(t *testing.T) {
	t.Parallel()
	in := `json decode error: x raw message was: {"access_token":"eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJ4In0.c2lnbmF0dXJl"}`
	if out := sanitize(in); strings.Contains(out, "eyJ") {
		t.Fatal(out)
	}
}

// BenchmarkTokenCached measures the steady-state path every SMTP session
// takes: a held token, no network.
func BenchmarkTokenCached(b *testing.B) {
	s := &EntraSource{clock: time.Now}
	now := time.Now()
	s.tok = Token{Value: "x", ExpiresOn: now.Add(time.Hour)}
	s.obtained = now
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.Token(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// An expired certificate: NewSource logs it at once, and the fake refuses
// it as Entra does (700027, "The key used is expired").
func TestExpiredCertificate(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	tc := certs(t)[2]
	expired, err := x509.ParseCertificate(selfSignedWith(t, tc.key, time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.srv.RegisterCert(testClientID, expired); err != nil {
		t.Fatal(err)
	}
	c, err := NewCertificate(expired, nil, tc.key)
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.DebugLevel)
	s := f.source(t, Credential{Certificate: c}, func(o *Options) { o.Logger = zap.New(core) })
	// An error naming the certificate, at start.
	if errs := logs.FilterLevelExact(zap.ErrorLevel).All(); len(errs) != 1 || errs[0].ContextMap()["certificate"] != c.String() {
		t.Fatalf("no expiry error naming the certificate logged: %v", logs.All())
	}
	_, err = s.Token(ctxT(t))
	if ee := entraErr(t, err); ee.Code() != 700027 || !strings.Contains(ee.Description, "expired") {
		t.Fatalf("%v", ee)
	}
}

func selfSignedWith(t *testing.T, key *rsa.PrivateKey, nb, na time.Time) []byte {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "expired app"}, NotBefore: nb, NotAfter: na}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}
