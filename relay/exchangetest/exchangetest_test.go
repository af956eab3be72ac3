package exchangetest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/o365relay/o365relay/config/secret"
	"github.com/o365relay/o365relay/config/tlstest"
	"github.com/o365relay/o365relay/config/waitfor"
)

const (
	tenant  = "tenant-1"
	app     = "app-1"
	mailbox = "relay@contoso.test"
)

type fixture struct {
	srv  *Server
	ca   *tlstest.CA
	key  *rsa.PrivateKey
	good secret.Secret
}

var keyOnce = sync.OnceValues(func() (*rsa.PrivateKey, error) { return rsa.GenerateKey(rand.Reader, 2048) })

func newFixture(t *testing.T, mod func(*Options)) *fixture {
	t.Helper()
	key, err := keyOnce()
	if err != nil {
		t.Fatal(err)
	}
	ca, err := tlstest.NewCA("exchangetest CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.ServerCert()
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{
		TLS: cert, TokenKey: &key.PublicKey, Tenant: tenant,
		Mailboxes: map[string]Mailbox{
			mailbox:                 {Apps: []string{app}, SendAs: []string{"noreply@contoso.test"}},
			"disabled@contoso.test": {Apps: []string{app}, AuthDisabled: true},
		},
	}
	if mod != nil {
		mod(&opts)
	}
	srv, err := NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	good, err := SignToken(key, Claims{AppID: app, Tenant: tenant})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{srv: srv, ca: ca, key: key, good: good}
}

// dial returns a go-smtp client after STARTTLS and EHLO.
func (f *fixture) dial(t *testing.T) *smtp.Client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", f.srv.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c, err := smtp.NewClientStartTLS(conn, &tls.Config{ServerName: "localhost", RootCAs: f.ca.Pool()})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Hello("test"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() }) // may already be closed by QUIT
	return c
}

type xo struct {
	mech, user string
	tok        secret.Secret
	ir         bool
	n          int
}

func (x *xo) Start() (string, []byte, error) {
	if x.ir {
		return x.mech, x.payload(), nil
	}
	return x.mech, nil, nil
}
func (x *xo) payload() []byte {
	return []byte("user=" + x.user + "\x01auth=Bearer " + x.tok.Reveal() + "\x01\x01")
}
func (x *xo) Next([]byte) ([]byte, error) {
	x.n++
	if x.n == 1 && !x.ir {
		return x.payload(), nil
	}
	return []byte{}, nil
}

func code(t *testing.T, err error) (int, smtp.EnhancedCode) {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Fatalf("want *smtp.SMTPError, got %v", err)
	}
	return se.Code, se.EnhancedCode
}

func TestAuthOnlyAfterTLS(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	conn, err := net.DialTimeout("tcp", f.srv.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := smtp.NewClient(conn)
	defer func() { _ = c.Close() }()
	if err := c.Hello("test"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("AUTH"); ok {
		t.Error("AUTH advertised before STARTTLS")
	}
	if ok, _ := c.Extension("STARTTLS"); !ok {
		t.Error("STARTTLS not advertised")
	}
	if ok, size := c.Extension("SIZE"); !ok || size != "157286400" {
		t.Errorf("SIZE = %q", size)
	}
	err = c.Auth(&xo{mech: "XOAUTH2", user: mailbox, tok: f.good, ir: true})
	if cd, enh := code(t, err); cd != 530 || enh != (smtp.EnhancedCode{5, 7, 0}) {
		t.Errorf("AUTH before TLS: %v", err)
	}
	if n := f.srv.PlainAuthAttempts(); n != 1 {
		t.Errorf("PlainAuthAttempts = %d", n)
	}
	if v := f.srv.Violations(); len(v) != 1 || !strings.Contains(v[0], "plaintext") {
		t.Errorf("Violations = %q", v)
	}
	if strings.Contains(strings.Join(f.srv.Violations(), " "), f.good.Reveal()) {
		t.Error("violation text contains the token")
	}
}

func TestAuthAdvertisedAfterTLS(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	c := f.dial(t)
	if ok, v := c.Extension("AUTH"); !ok || v != "XOAUTH2" {
		t.Errorf("AUTH = %q, %v", v, ok)
	}
	if ok, _ := c.Extension("SMTPUTF8"); !ok {
		t.Error("SMTPUTF8 not advertised")
	}
}

func TestTokenChecks(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	other, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	sign := func(k *rsa.PrivateKey, c Claims) secret.Secret {
		s, err := SignToken(k, c)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	cases := []struct {
		name string
		user string
		tok  secret.Secret
		code int
		enh  smtp.EnhancedCode
	}{
		{"good", mailbox, f.good, 0, smtp.EnhancedCode{}},
		{"good mixed case user", "Relay@Contoso.Test", f.good, 0, smtp.EnhancedCode{}},
		{"wrong key", mailbox, sign(other, Claims{AppID: app, Tenant: tenant}), 535, smtp.EnhancedCode{5, 7, 3}},
		{"expired", mailbox, sign(f.key, Claims{AppID: app, Tenant: tenant, IssuedAt: now.Add(-2 * time.Hour)}), 535, smtp.EnhancedCode{5, 7, 3}},
		{"not yet valid", mailbox, sign(f.key, Claims{AppID: app, Tenant: tenant, NotBefore: now.Add(time.Hour)}), 535, smtp.EnhancedCode{5, 7, 3}},
		{"graph audience", mailbox, sign(f.key, Claims{AppID: app, Tenant: tenant, Audience: "https://graph.microsoft.com"}), 535, smtp.EnhancedCode{5, 7, 3}},
		{"exchange app id audience", mailbox, sign(f.key, Claims{AppID: app, Tenant: tenant, Audience: AudienceAppID}), 0, smtp.EnhancedCode{}},
		{"wrong tenant", mailbox, sign(f.key, Claims{AppID: app, Tenant: "other"}), 535, smtp.EnhancedCode{5, 7, 3}},
		{"no role", mailbox, sign(f.key, Claims{AppID: app, Tenant: tenant, Roles: []string{}}), 535, smtp.EnhancedCode{5, 7, 3}},
		{"app without FullAccess", mailbox, sign(f.key, Claims{AppID: "app-2", Tenant: tenant}), 535, smtp.EnhancedCode{5, 7, 3}},
		{"unknown mailbox", "nobody@contoso.test", f.good, 535, smtp.EnhancedCode{5, 7, 3}},
		{"auth disabled", "disabled@contoso.test", f.good, 535, smtp.EnhancedCode{5, 7, 139}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := f.dial(t)
			err := c.Auth(&xo{mech: "XOAUTH2", user: tc.user, tok: tc.tok})
			if tc.code == 0 {
				if err != nil {
					t.Fatalf("Auth: %v", err)
				}
				return
			}
			if cd, enh := code(t, err); cd != tc.code || enh != tc.enh {
				t.Errorf("Auth = %v, want %d %v", err, tc.code, tc.enh)
			}
		})
	}
}

func TestJSONErrorChallenge(t *testing.T) {
	t.Parallel()
	f := newFixture(t, func(o *Options) { o.JSONErrorChallenge = true })
	c := f.dial(t)
	x := &xo{mech: "XOAUTH2", user: "nobody@contoso.test", tok: f.good}
	err := c.Auth(x)
	if cd, _ := code(t, err); cd != 535 {
		t.Errorf("Auth = %v", err)
	}
	if x.n != 2 {
		t.Errorf("Next called %d times, want 2 (payload, then empty answer to the JSON challenge)", x.n)
	}
	if v := f.srv.Violations(); len(v) != 0 {
		t.Errorf("Violations = %q", v)
	}
}

func TestMechanismChecks(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	c := f.dial(t)
	err := c.Auth(&xo{mech: "PLAIN", user: mailbox, tok: f.good})
	if cd, enh := code(t, err); cd != 504 || enh != (smtp.EnhancedCode{5, 7, 4}) {
		t.Errorf("AUTH PLAIN = %v", err)
	}
	// Real Exchange tokens are 1.5–3 KB; make this one as long.
	long, err := SignToken(f.key, Claims{AppID: app, Tenant: tenant, Roles: []string{RoleSendAsApp, strings.Repeat("x", 1500)}})
	if err != nil {
		t.Fatal(err)
	}
	c2 := f.dial(t)
	if err := c2.Auth(&xo{mech: "xoauth2", user: mailbox, tok: long, ir: true}); err != nil {
		t.Fatalf("lowercase inline AUTH: %v", err)
	}
	v := strings.Join(f.srv.Violations(), "\n")
	if !strings.Contains(v, "upper case") || !strings.Contains(v, "octets") {
		t.Errorf("Violations = %q, want lowercase mechanism and long AUTH line", v)
	}
}

func TestMailRules(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	c := f.dial(t)
	if cd, enh := code(t, c.Mail(mailbox, nil)); cd != 530 || enh != (smtp.EnhancedCode{5, 7, 57}) {
		t.Errorf("MAIL before AUTH: %d %v", cd, enh)
	}
	if err := c.Auth(&xo{mech: "XOAUTH2", user: mailbox, tok: f.good}); err != nil {
		t.Fatal(err)
	}
	if cd, enh := code(t, c.Mail("ceo@contoso.test", nil)); cd != 550 || enh != (smtp.EnhancedCode{5, 7, 60}) {
		t.Errorf("MAIL FROM other: %d %v", cd, enh)
	}
	// Send-As address in the envelope, a From: header it may not use.
	err := c.SendMail("noreply@contoso.test", []string{"a@example.test"},
		strings.NewReader("From: ceo@contoso.test\r\nSubject: x\r\n\r\nhi\r\n"))
	if cd, enh := code(t, err); cd != 554 || enh != (smtp.EnhancedCode{5, 2, 252}) || !strings.Contains(err.Error(), "SendAsDenied") {
		t.Errorf("SendAs: %v", err)
	}
	body := "From: Relay <relay@contoso.test>\r\nSubject: x\r\n\r\n.hi\r\n"
	if err := c.Mail(mailbox, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("a@example.test", nil); err != nil {
		t.Fatal(err)
	}
	dc, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dc.Write([]byte(body)); err != nil {
		t.Fatal(err)
	}
	resp, err := dc.CloseWithResponse()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(resp.StatusText, "2.0.0 OK <") || !strings.Contains(resp.StatusText, "[Hostname="+Hostname+"]") {
		t.Errorf("reply %q", resp.StatusText)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.srv.WaitMessages(ctx, 1); err != nil {
		t.Fatal(err)
	}
	m := f.srv.Messages()
	if len(m) != 1 || string(m[0].Data) != body || !m[0].TLS || m[0].AuthUser != mailbox || m[0].AppID != app || m[0].Size != int64(len(body)) {
		t.Errorf("messages = %+v", m)
	}
}

func TestConcurrentLimit(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	var cs []*smtp.Client
	for range 3 {
		c := f.dial(t)
		if err := c.Auth(&xo{mech: "XOAUTH2", user: mailbox, tok: f.good}); err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	c4 := f.dial(t)
	err := c4.Auth(&xo{mech: "XOAUTH2", user: mailbox, tok: f.good})
	if cd, enh := code(t, err); cd != 432 || enh != (smtp.EnhancedCode{4, 3, 2}) {
		t.Errorf("4th AUTH: %v", err)
	}
	if st := f.srv.Stats(); st.MaxConcurrentPerMailbox[mailbox] != 3 || st.Auths != 3 {
		t.Errorf("stats %+v", st)
	}
	if err := cs[0].Quit(); err != nil {
		t.Fatal(err)
	}
	// The slot is freed when the server closes the session after QUIT;
	// AUTH on a fresh connection succeeds once it is.
	waitfor.Check(t, "AUTH after QUIT", func() error {
		return f.dial(t).Auth(&xo{mech: "XOAUTH2", user: mailbox, tok: f.good})
	})
}

func TestFaultsAndDown(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	f.srv.Inject(Fault{Stage: StageConnect, Reply: &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Service not available"}})
	conn, err := net.DialTimeout("tcp", f.srv.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := smtp.NewClient(conn)
	err = c.Hello("x")
	if cd, _ := code(t, err); cd != 421 {
		t.Errorf("greeting = %v", err)
	}
	_ = c.Close()

	f.srv.SetDown(true)
	conn, err = net.DialTimeout("tcp", f.srv.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c = smtp.NewClient(conn)
	if err := c.Hello("x"); err == nil {
		t.Error("Hello succeeded while down")
	}
	_ = c.Close()
	f.srv.SetDown(false)

	f.srv.Inject(Fault{Stage: StageRcpt, Rcpt: "bad@example.test", Reply: &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "unknown"}, Times: 2})
	c = f.dial(t)
	if err := c.Auth(&xo{mech: "XOAUTH2", user: mailbox, tok: f.good}); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail(mailbox, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("good@example.test", nil); err != nil {
		t.Errorf("RCPT good: %v", err)
	}
	for range 2 {
		if cd, _ := code(t, c.Rcpt("bad@example.test", nil)); cd != 550 {
			t.Errorf("RCPT bad: %d", cd)
		}
	}
	if err := c.Rcpt("bad@example.test", nil); err != nil {
		t.Errorf("fault fired more than Times: %v", err)
	}
	f.srv.Reset()
	if st := f.srv.Stats(); st.Sessions != 0 || st.Auths != 0 {
		t.Errorf("after Reset: %+v", st)
	}
}

func TestWaitMessagesCancelled(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := f.srv.WaitMessages(ctx, 1); !errors.Is(err, context.Canceled) {
		t.Errorf("WaitMessages = %v", err)
	}
}

// RBAC for Applications: a token without the SMTP.SendAsApp role is
// accepted for a mailbox in the app's role assignment scope, without
// FullAccess; a token with the role still needs FullAccess (the claim
// "would trigger an unnecessary check for mailbox permissions").
func TestRBACForApplications(t *testing.T) {
	t.Parallel()
	const rbacApp = "rbac-app"
	f := newFixture(t, func(o *Options) {
		o.Mailboxes["scoped@contoso.test"] = Mailbox{RBACApps: []string{rbacApp}}
	})
	sign := func(c Claims) secret.Secret {
		s, err := SignToken(f.key, c)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	cases := []struct {
		name, user string
		tok        secret.Secret
		code       int
	}{
		{"no role, in scope", "scoped@contoso.test", sign(Claims{AppID: rbacApp, Tenant: tenant, Roles: []string{}}), 0},
		{"no role, out of scope", mailbox, sign(Claims{AppID: rbacApp, Tenant: tenant, Roles: []string{}}), 535},
		{"no role, other app", "scoped@contoso.test", sign(Claims{AppID: app, Tenant: tenant, Roles: []string{}}), 535},
		{"role but no FullAccess", "scoped@contoso.test", sign(Claims{AppID: rbacApp, Tenant: tenant}), 535},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := f.dial(t).Auth(&xo{mech: "XOAUTH2", user: tc.user, tok: tc.tok})
			if tc.code == 0 {
				if err != nil {
					t.Fatalf("Auth: %v", err)
				}
				return
			}
			if cd, enh := code(t, err); cd != tc.code || enh != (smtp.EnhancedCode{5, 7, 3}) {
				t.Errorf("Auth = %v, want 535 5.7.3", err)
			}
		})
	}
}
