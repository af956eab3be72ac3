package doctor

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"

	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/config/tlstest"
	"github.com/o365relay/o365relay/relay"
	"github.com/o365relay/o365relay/relay/exchangetest"
	"github.com/o365relay/o365relay/relay/relaytest"
	"github.com/o365relay/o365relay/token/entratest"
)

// fixture is a fake Microsoft 365 and the settings of a relay pointed at it;
// each test breaks one thing on purpose.
type fixture struct {
	t     *testing.T
	cloud *relaytest.Cloud
	dir   string
	flags map[string]string
	file  string // config file, if any
	opts  Options
}

// shared is one fake Microsoft 365 for every test: making one costs ~1.5 s
// of RSA key generation. Tests change the relay's settings, register apps
// under client IDs of their own, or start a private fake Exchange (no key
// generation: it reuses shared.cert); they never change what another test
// relies on.
var shared struct {
	once  sync.Once
	dir   string
	cloud *relaytest.Cloud
	cert  tls.Certificate // for private fake Exchanges
	err   error
}

func sharedFixture(t *testing.T) *fixture {
	t.Helper()
	shared.once.Do(func() {
		if shared.dir, shared.err = os.MkdirTemp("", "doctor-test-"); shared.err != nil {
			return
		}
		if shared.cloud, shared.err = relaytest.New(relaytest.Options{Dir: shared.dir}); shared.err != nil {
			return
		}
		shared.cert, shared.err = shared.cloud.CA.ServerCert()
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return fixtureFor(t, shared.cloud)
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.cloud != nil {
		if err := shared.cloud.Close(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	_ = os.RemoveAll(shared.dir)
	os.Exit(code)
}

func fixtureFor(t *testing.T, cloud *relaytest.Cloud) *fixture {
	f := &fixture{t: t, cloud: cloud, dir: t.TempDir(), flags: cloud.Settings()}
	f.flags["spool_dir"] = filepath.Join(f.dir, "spool")
	f.flags["listen"] = freeAddr(t)
	f.flags["admin_listen"] = ""
	f.opts = Options{HTTPClient: cloud.HTTPClient(), RootCAs: cloud.CA.Pool(), Timeout: 20 * time.Second}
	return f
}

// exchange starts a private fake Exchange that trusts the shared Entra ID's
// tokens, with the given mailboxes, and points the relay at it.
func (f *fixture) exchange(mailboxes map[string]exchangetest.Mailbox, mod func(*exchangetest.Options)) *exchangetest.Server {
	f.t.Helper()
	o := exchangetest.Options{TLS: shared.cert, TokenKey: f.cloud.Entra.PublicKey(), Tenant: f.cloud.Entra.Tenant(), Mailboxes: mailboxes}
	if mod != nil {
		mod(&o)
	}
	x, err := exchangetest.NewServer(o)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() {
		if err := x.Close(); err != nil {
			f.t.Error(err)
		}
	})
	f.flags["upstream"] = x.Addr()
	return x
}

// app registers an app of the test's own on the shared Entra ID.
func (f *fixture) app(a entratest.App) {
	f.cloud.Entra.AddApp(a)
	f.flags["client_id"] = a.ClientID
}

func granted(apps ...string) exchangetest.Mailbox { return exchangetest.Mailbox{Apps: apps} }

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return a
}

func (f *fixture) config() *config.Config {
	f.t.Helper()
	cfg, err := config.Load(config.Input{File: f.file, Flags: f.flags})
	if err != nil {
		f.t.Fatal(err)
	}
	return cfg
}

func (f *fixture) run() *Report {
	f.t.Helper()
	o := f.opts
	o.Config = f.config()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rep := Run(ctx, o)
	if f.t.Failed() {
		return rep
	}
	f.t.Cleanup(func() {
		if f.t.Failed() {
			b, _ := json.MarshalIndent(rep, "", "  ")
			f.t.Logf("report:\n%s", b)
		}
	})
	return rep
}

// writeCred writes a PEM credential file.
func (f *fixture) writeCred(name string, cert *x509.Certificate, key []byte) string {
	f.t.Helper()
	p := filepath.Join(f.dir, name)
	if err := os.WriteFile(p, append(tlstest.CertPEM(cert), key...), 0o600); err != nil {
		f.t.Fatal(err)
	}
	return p
}

// want asserts the first failed check: its step, name, and the texts its
// message and fix must carry, and that the report failed.
func want(t *testing.T, rep *Report, step int, name string, azure []int, msg, fix []string) *Check {
	t.Helper()
	if rep.OK {
		t.Fatalf("report OK, want ✘ %d %s", step, name)
	}
	var c *Check
	for i := range rep.Checks {
		if rep.Checks[i].Status == Fail && rep.Checks[i].Name == name {
			c = &rep.Checks[i]
			break
		}
	}
	if c == nil {
		t.Fatalf("no failed %q check", name)
	}
	if c.Step != step {
		t.Errorf("%s: step %d, want %d", name, c.Step, step)
	}
	if azure != nil && !equalInts(c.AzureSteps, azure) {
		t.Errorf("%s: Azure steps %v, want %v", name, c.AzureSteps, azure)
	}
	for _, w := range msg {
		if !strings.Contains(c.Message, w) {
			t.Errorf("%s message lacks %q:\n%s", name, w, c.Message)
		}
	}
	for _, w := range fix {
		if !strings.Contains(c.Fix, w) {
			t.Errorf("%s fix lacks %q:\n%s", name, w, c.Fix)
		}
	}
	return c
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func status(rep *Report, name string) Status {
	if c := rep.Find(name); c != nil {
		return c.Status
	}
	return ""
}

func TestAllGood(t *testing.T) {
	t.Parallel()
	f := sharedFixture(t)
	x := f.exchange(map[string]exchangetest.Mailbox{relaytest.Mailbox: granted(relaytest.ClientID)}, nil)
	rep := f.run()
	if !rep.OK {
		t.Fatalf("not OK: %+v", rep.Failed())
	}
	for _, c := range rep.Checks {
		if c.Status != OK {
			t.Errorf("%d %s: %s %s", c.Step, c.Name, c.Status, c.Message)
		}
	}
	names := []string{}
	for _, c := range rep.Checks {
		names = append(names, c.Name)
	}
	if got := strings.Join(names, " "); got != "configuration clock credential token claims upstream auth spool listener" {
		t.Errorf("checks %s", got)
	}
	cred := rep.Find("credential")
	if cred.Details["thumbprint_sha1"] == "" || !strings.Contains(cred.Message, cred.Details["thumbprint_sha1"]) || !strings.Contains(cred.Message, cred.Details["thumbprint_sha256"]) {
		t.Errorf("thumbprints not shown: %s", cred.Message)
	}
	if tp := cred.Details["thumbprint_sha1"]; tp != strings.ToUpper(tp) || len(tp) != 40 {
		t.Errorf("SHA-1 thumbprint %q is not 40 uppercase hex digits", tp)
	}
	if c := rep.Find("claims"); !strings.Contains(c.Message, relaytest.ObjectID) || !strings.Contains(c.Message, "SMTP.SendAsApp") {
		t.Errorf("claims: %s", c.Message)
	}
	if c := rep.Find("upstream"); !strings.Contains(c.Message, "TLS 1.3") {
		t.Errorf("upstream: %s", c.Message)
	}
	if n := len(x.Messages()); n != 0 {
		t.Errorf("the doctor sent %d messages", n)
	}
	if v := x.Violations(); len(v) != 0 {
		t.Errorf("protocol violations: %v", v)
	}
	if st := x.Stats(); st.Auths != 1 {
		t.Errorf("%d AUTHs, want 1", st.Auths)
	}
}

// AADSTS700016: a client ID the tenant does not know.
func TestUnknownClientID(t *testing.T) {
	t.Parallel()
	f := sharedFixture(t)
	f.flags["client_id"] = "11111111-2222-3333-4444-555555555555"
	rep := f.run()
	want(t, rep, 3, "token", []int{1}, []string{"AADSTS700016", "wrong client ID or tenant"},
		[]string{"client 11111111-2222-3333-4444-555555555555", f.cloud.Entra.Tenant(), "AZURE_CLIENT_ID"})
	for _, n := range []string{"claims", "auth"} {
		if s := status(rep, n); s != Skip {
			t.Errorf("%s: %s, want skipped", n, s)
		}
	}
	if s := status(rep, "upstream"); s != OK {
		t.Errorf("upstream %s: it needs no token", s)
	}
}

// AADSTS90002: a tenant that does not exist.
func TestUnknownTenant(t *testing.T) {
	t.Parallel()
	f := sharedFixture(t)
	f.flags["tenant_id"] = "99999999-0000-0000-0000-000000000000"
	rep := f.run()
	want(t, rep, 3, "token", []int{1}, []string{"AADSTS90002"},
		[]string{"Tenant 99999999-0000-0000-0000-000000000000", "AZURE_TENANT_ID", "login.microsoftonline.us"})
}

// Admin consent missing: the token has no roles claim; Exchange refuses it
// with 535 5.7.3, and the fix starts with Grant admin consent.
func TestTokenWithoutRole(t *testing.T) {
	t.Parallel()
	f := sharedFixture(t)
	const client, oid = "a0000000-0000-4000-8000-00000000e0e1", "b0000000-0000-4000-8000-00000000e0e1"
	f.app(entratest.App{ClientID: client, ObjectID: oid, Certs: []*x509.Certificate{f.cloud.Cert}}) // Roles nil: no consent
	f.exchange(map[string]exchangetest.Mailbox{relaytest.Mailbox: granted(client)}, nil)
	rep := f.run()
	if c := rep.Find("claims"); c.Status != Warn || !strings.Contains(c.Message, "no SMTP.SendAsApp role") || !strings.Contains(c.Message, "RBAC for Applications") {
		t.Errorf("claims: %s %s", c.Status, c.Message)
	}
	want(t, rep, 6, "auth", []int{2, 5, 6}, []string{"535 5.7.3", "no SMTP.SendAsApp role"},
		[]string{"Grant admin consent", "API permissions", "New-ServicePrincipal -AppId " + client + " -ObjectId " + oid + " -Organization " + f.cloud.Entra.Tenant()})
}

// The mailbox exists but the app was never granted FullAccess on it: the
// fix is the filled-in New-ServicePrincipal and Add-MailboxPermission, with
// the object ID from the token's oid. With a second, granted mailbox the
// doctor knows the service principal exists and asks only for the grant.
func TestMailboxNotGranted(t *testing.T) {
	t.Parallel()
	const other = "printer@contoso.example"
	f := sharedFixture(t)
	f.exchange(map[string]exchangetest.Mailbox{relaytest.Mailbox: granted(relaytest.ClientID), other: {}}, nil)
	f.flags["mailbox"] = other
	rep := f.run()
	c := want(t, rep, 6, "auth", []int{5, 6}, []string{"535 5.7.3", other},
		[]string{
			"Connect-ExchangeOnline -Organization " + f.cloud.Entra.Tenant(),
			"New-ServicePrincipal -AppId " + relaytest.ClientID + " -ObjectId " + relaytest.ObjectID + " -Organization " + f.cloud.Entra.Tenant(),
			"Add-MailboxPermission -Identity " + other + " -User " + relaytest.ObjectID + " -AccessRights FullAccess",
			"oid claim",
		})
	if c.Target != other {
		t.Errorf("target %q", c.Target)
	}

	f.opts.Mailboxes = []string{relaytest.Mailbox, other}
	rep = f.run()
	c = want(t, rep, 6, "auth", []int{6}, []string{other, "service principal is registered"},
		[]string{"Add-MailboxPermission -Identity " + other + " -User " + relaytest.ObjectID})
	if strings.Contains(c.Fix, "New-ServicePrincipal") {
		t.Errorf("asks for New-ServicePrincipal although another mailbox works:\n%s", c.Fix)
	}
	if n := len(rep.Failed()); n != 1 {
		t.Errorf("%d failed checks, want 1 (only %s)", n, other)
	}
}

// Set-CASMailbox -SmtpClientAuthenticationDisabled $true: 535 5.7.139.
func TestSMTPAuthDisabled(t *testing.T) {
	t.Parallel()
	f := sharedFixture(t)
	f.exchange(map[string]exchangetest.Mailbox{relaytest.Mailbox: {Apps: []string{relaytest.ClientID}, AuthDisabled: true}}, nil)
	rep := f.run()
	want(t, rep, 6, "auth", []int{7}, []string{"535 5.7.139", "SMTP AUTH is disabled"},
		[]string{"Set-CASMailbox -Identity " + relaytest.Mailbox + " -SmtpClientAuthenticationDisabled $false", "Security Defaults", "Set-TransportConfig"})
}

// A certificate past its NotAfter, even one still registered: step 2 says
// so, and Entra's refusal (AADSTS700027) follows at step 3.
func TestExpiredCertificate(t *testing.T) {
	t.Parallel()
	f := sharedFixture(t)
	cert, key, err := tlstest.SelfSigned("expired", time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	f.app(entratest.App{ClientID: "a0000000-0000-4000-8000-00000000e0e2", ObjectID: relaytest.ObjectID, Certs: []*x509.Certificate{cert}, Roles: []string{exchangetest.RoleSendAsApp}})
	f.flags["client_certificate_path"] = f.writeCred("expired.pem", cert, tlstest.PKCS1PEM(key))
	rep := f.run()
	want(t, rep, 2, "credential", []int{3}, []string{"expired on", "SHA-1 thumbprint"},
		[]string{"openssl req -x509", "Certificates & secrets → Upload certificate", "a0000000-0000-4000-8000-00000000e0e2"})
	want(t, rep, 3, "token", []int{3}, []string{"AADSTS700027", "expired"}, nil)
}

// A key that is not the certificate's: step 2 names it, nothing is sent
// to Entra ID.
func TestKeyNotMatchingCertificate(t *testing.T) {
	t.Parallel()
	f := sharedFixture(t)
	_, otherKey, err := tlstest.SelfSigned("other", time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	path := f.writeCred("mismatch.pem", f.cloud.Cert, tlstest.PKCS1PEM(otherKey))
	f.flags["client_certificate_path"] = path
	rep := f.run()
	want(t, rep, 2, "credential", []int{3}, []string{"key does not match the certificate"},
		[]string{"openssl x509 -noout -pubkey -in " + path, "openssl pkey -pubout -in " + path})
	if s := status(rep, "token"); s != Skip {
		t.Errorf("token %s, want skipped", s)
	}
}

// Exchange's certificate from a CA this host does not trust (a TLS-
// inspecting proxy): step 5 fails, no token goes on the wire.
func TestUpstreamCertificateNotTrusted(t *testing.T) {
	t.Parallel()
	other, err := tlstest.NewCA("Contoso Inspection CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := other.ServerCert()
	if err != nil {
		t.Fatal(err)
	}
	f := sharedFixture(t)
	x := f.exchange(map[string]exchangetest.Mailbox{relaytest.Mailbox: granted(relaytest.ClientID)}, func(o *exchangetest.Options) { o.TLS = cert })
	rep := f.run()
	want(t, rep, 5, "upstream", nil, []string{"not trusted", "unknown authority", "Contoso Inspection CA"},
		[]string{"TLS inspection", "SSL_CERT_FILE", "openssl s_client -starttls smtp"})
	if s := status(rep, "auth"); s != Skip {
		t.Errorf("auth %s, want skipped", s)
	}
	if st := x.Stats(); st.Auths+st.AuthFailures != 0 {
		t.Errorf("AUTH attempted on an untrusted connection: %+v", st)
	}
}

// AADSTS700027 for a certificate never uploaded: the fix names the
// thumbprint the relay presents and says to wait after uploading.
func TestUnregisteredCertificate(t *testing.T) {
	t.Parallel()
	f := sharedFixture(t)
	cert, key, err := tlstest.SelfSigned("not uploaded", time.Now().Add(-time.Hour), time.Now().Add(90*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	f.flags["client_certificate_path"] = f.writeCred("new.pem", cert, tlstest.PKCS1PEM(key))
	rep := f.run()
	tp := rep.Find("credential").Details["thumbprint_sha1"]
	want(t, rep, 3, "token", []int{3}, []string{"AADSTS700027", "wait 2 minutes after uploading"},
		[]string{"thumbprint " + tp, "Upload certificate", "wait 2 minutes after uploading", relaytest.ClientID})
}

// A local clock 10 minutes fast fails the clock check (and Entra refuses
// the assertion with AADSTS700024).
func TestClockSkew(t *testing.T) {
	t.Parallel()
	f := sharedFixture(t)
	f.opts.Clock = func() time.Time { return time.Now().Add(10 * time.Minute) }
	rep := f.run()
	want(t, rep, 1, "clock", nil, []string{"ahead of Entra ID's"}, []string{"timedatectl set-ntp true"})
	want(t, rep, 3, "token", nil, []string{"AADSTS700024"}, []string{"clock"})
}

// A listener held by a running relay is fine; one held by another program
// is not.
func TestListener(t *testing.T) {
	t.Parallel()
	f := sharedFixture(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	f.flags["listen"] = ln.Addr().String()
	rep := f.run()
	want(t, rep, 7, "listener", nil, []string{"in use by another program"}, []string{"O365RELAY_LISTEN"})

	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	cfg := f.config()
	r, err := relay.New(cfg, relay.Deps{Logger: zap.NewNop(), HTTPClient: f.cloud.HTTPClient(), RootCAs: f.cloud.CA.Pool()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	rep = f.run()
	if c := rep.Find("listener"); c.Status != OK || !strings.Contains(c.Message, "held by the running relay") {
		t.Errorf("listener: %s %s", c.Status, c.Message)
	}
	if s := status(rep, "spool"); s != OK {
		t.Errorf("spool %s", s)
	}
}

func TestSpoolNotWritable(t *testing.T) {
	t.Parallel()
	// A file where the directory must be: fails as root too (CI runs as
	// root, which permissions would not stop).
	f := sharedFixture(t)
	p := filepath.Join(f.dir, "file")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	f.flags["spool_dir"] = p
	rep := f.run()
	want(t, rep, 7, "spool", nil, []string{"not a directory"}, []string{"O365RELAY_SPOOL_DIR"})
}

// The report is what --json prints: it round-trips.
func TestReportJSON(t *testing.T) {
	t.Parallel()
	f := sharedFixture(t)
	f.flags["client_id"] = "11111111-2222-3333-4444-555555555555"
	rep := f.run()
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.OK || len(back.Checks) != len(rep.Checks) || back.Find("token").AzureSteps[0] != 1 {
		t.Errorf("round trip: %+v", back)
	}
}

// README.md's troubleshooting section is built around the checklist: every
// check the doctor runs has a row there, by its step and name.
func TestReadmeNamesEveryCheck(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	i := strings.Index(readme, "## Troubleshooting")
	if i < 0 {
		t.Fatal("README.md has no Troubleshooting section")
	}
	section := readme[i:]
	for _, c := range []struct {
		step int
		name string
	}{{1, "configuration"}, {1, "clock"}, {2, "credential"}, {3, "token"}, {4, "claims"}, {5, "upstream"}, {6, "auth"}, {7, "spool"}, {7, "listener"}} {
		if w := fmt.Sprintf("✘ %d %s", c.step, c.name); !strings.Contains(section, w) {
			t.Errorf("README troubleshooting lacks %q", w)
		}
	}
	for _, w := range []string{"AADSTS700016", "AADSTS90002", "AADSTS700027", "wait 2 minutes after uploading", "535 5.7.3", "535 5.7.139", "o365relay send", "o365relay token", "--print-token", "--json"} {
		if !strings.Contains(section, w) {
			t.Errorf("README troubleshooting lacks %q", w)
		}
	}
}

// Exchange RBAC for Applications: the token has no role, and that is only
// a warning — AUTH succeeds, so the report passes.
func TestRBACForApplicationsPasses(t *testing.T) {
	t.Parallel()
	f := sharedFixture(t)
	const client = "a0000000-0000-4000-8000-00000000e0e3"
	f.app(entratest.App{ClientID: client, ObjectID: relaytest.ObjectID, Certs: []*x509.Certificate{f.cloud.Cert}})
	f.exchange(map[string]exchangetest.Mailbox{relaytest.Mailbox: {RBACApps: []string{client}}}, nil)
	rep := f.run()
	if !rep.OK {
		t.Fatalf("not OK: %+v", rep.Failed())
	}
	c := rep.Find("claims")
	if c.Status != Warn || !strings.Contains(c.Fix, "New-ManagementRoleAssignment -Role 'Application SMTP.SendAsApp' -App "+client) || !strings.Contains(c.Fix, "Grant admin consent") {
		t.Errorf("claims: %s %s\n%s", c.Status, c.Message, c.Fix)
	}
	if s := status(rep, "auth"); s != OK {
		t.Errorf("auth %s", s)
	}
}

// Client secret: a wrong one is AADSTS7000215 with the Value-not-ID fix; a
// right one passes.
func TestClientSecret(t *testing.T) {
	t.Parallel()
	f := sharedFixture(t)
	const client = "a0000000-0000-4000-8000-00000000e0e4"
	f.app(entratest.App{ClientID: client, ObjectID: relaytest.ObjectID, Secret: "right~secret", Roles: []string{exchangetest.RoleSendAsApp}})
	f.exchange(map[string]exchangetest.Mailbox{relaytest.Mailbox: granted(client)}, nil)
	delete(f.flags, "client_certificate_path")
	f.flags["client_secret"] = "wrong~secret"
	rep := f.run()
	want(t, rep, 3, "token", []int{3}, []string{"AADSTS7000215"}, []string{"Value", "not its Secret ID", client})
	f.flags["client_secret"] = "right~secret"
	if rep := f.run(); !rep.OK {
		t.Errorf("right secret: %+v", rep.Failed())
	}
	for _, c := range rep.Checks {
		if strings.Contains(c.Message+c.Fix, "wrong~secret") {
			t.Errorf("the secret is in the report: %+v", c)
		}
	}
}

// Workload identity: the token file's claims are shown; one for a service
// account the federated credential does not name is AADSTS70021.
func TestFederatedToken(t *testing.T) {
	t.Parallel()
	f := sharedFixture(t)
	cluster, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	const client, issuer = "a0000000-0000-4000-8000-00000000e0e5", "https://oidc.example.test/cluster"
	f.app(entratest.App{ClientID: client, ObjectID: relaytest.ObjectID, Roles: []string{exchangetest.RoleSendAsApp},
		Federated: []entratest.Federated{{Issuer: issuer, Subject: "system:serviceaccount:mail:relay", Keys: []crypto.PublicKey{&cluster.PublicKey}}}})
	now := time.Now()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{"iss": issuer, "sub": "system:serviceaccount:mail:other",
		"aud": []string{entratest.DefaultFederatedAudience}, "iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix()}).SignedString(cluster)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(f.dir, "azure-identity-token")
	if err := os.WriteFile(path, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	delete(f.flags, "client_certificate_path")
	f.flags["federated_token_file"] = path
	rep := f.run()
	if c := rep.Find("credential"); c.Status != OK || !strings.Contains(c.Message, "subject system:serviceaccount:mail:other") {
		t.Errorf("credential: %s %s", c.Status, c.Message)
	}
	want(t, rep, 3, "token", []int{3}, []string{"AADSTS70021"}, []string{"Federated credentials", "system:serviceaccount:<namespace>:<service account>"})
	if strings.Contains(fmt.Sprint(rep), tok) {
		t.Error("the federated token is in the report")
	}
}

// Every mailbox the configuration routes to is checked: the mailbox setting
// and each sender rule's (the file's senders list).
func TestEveryRoutedMailbox(t *testing.T) {
	t.Parallel()
	f := sharedFixture(t)
	const billing = "billing@contoso.example"
	f.exchange(map[string]exchangetest.Mailbox{relaytest.Mailbox: granted(relaytest.ClientID), billing: {}}, nil)
	f.file = filepath.Join(f.dir, "o365relay.yaml")
	if err := os.WriteFile(f.file, []byte("senders:\n  - sender: \"*@billing.example\"\n    mailbox: "+billing+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rep := f.run()
	var targets []string
	for _, c := range rep.Checks {
		if c.Name == "auth" {
			targets = append(targets, c.Target+":"+string(c.Status))
		}
	}
	if got := strings.Join(targets, " "); got != relaytest.Mailbox+":ok "+billing+":fail" {
		t.Errorf("auth checks %s", got)
	}
	want(t, rep, 6, "auth", []int{6}, []string{billing}, []string{"Add-MailboxPermission -Identity " + billing})
}
