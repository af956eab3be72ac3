package smtpd

import (
	"crypto/tls"
	"encoding/base64"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/o365relay/o365relay/config/tlstest"
	"github.com/o365relay/o365relay/relay/exchangetest"
)

// fakeAuth knows two users; alice may send as alice@ and anyone@ at
// contoso.com, bob only as bob@contoso.com.
type fakeAuth struct{}

func (fakeAuth) Authenticate(user, pass string) error {
	switch {
	case user == "alice" && pass == "correct horse":
		return nil
	case user == "bob" && pass == "battery staple":
		return nil
	case user == "alice" || user == "bob":
		// A real one costs a bcrypt comparison; the session's padding
		// is what equalises the two paths here.
		time.Sleep(20 * time.Millisecond)
		return errors.New("wrong password")
	}
	return errors.New("unknown user")
}

func (fakeAuth) MaySend(user, sender string) bool {
	if user == "alice" {
		return strings.HasSuffix(sender, "@contoso.com")
	}
	return sender == user+"@contoso.com"
}

type tlsFixture struct {
	ca   *tlstest.CA
	cert atomic.Pointer[tls.Config]
}

func newTLSFixture(t *testing.T) *tlsFixture {
	t.Helper()
	f := &tlsFixture{}
	f.ca = f.issue(t)
	return f
}

// issue makes a new CA, loads a certificate from it and returns the CA.
func (f *tlsFixture) issue(t *testing.T) *tlstest.CA {
	t.Helper()
	ca, err := tlstest.NewCA("smtpd test CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.ServerCert("relay.test")
	if err != nil {
		t.Fatal(err)
	}
	f.cert.Store(&tls.Config{Certificates: []tls.Certificate{cert}})
	return ca
}

func (f *tlsFixture) client(ca *tlstest.CA) *tls.Config {
	return &tls.Config{RootCAs: ca.Pool(), ServerName: "relay.test"}
}

func startAuthServer(t *testing.T, mod func(*Options)) (*Server, *recordSink, *tlsFixture) {
	t.Helper()
	fx := newTLSFixture(t)
	s, sink, _ := startServer(t, func(o *Options) {
		o.TLSConfig = fx.cert.Load
		o.Auth = fakeAuth{}
		o.AuthFailureDelay = 150 * time.Millisecond
		if mod != nil {
			mod(o)
		}
	})
	return s, sink, fx
}

// smtpClient connects, with STARTTLS when tlsCfg is set.
func smtpClient(t *testing.T, addr string, tlsCfg *tls.Config) *smtp.Client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	var c *smtp.Client
	if tlsCfg != nil {
		if c, err = smtp.NewClientStartTLS(conn, tlsCfg); err != nil {
			t.Fatal(err)
		}
	} else {
		c = smtp.NewClient(conn)
	}
	t.Cleanup(func() { _ = c.Close() })
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	return c
}

func wantCode(t *testing.T, err error, code int, enh smtp.EnhancedCode) {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != code || se.EnhancedCode != enh {
		t.Fatalf("got %v, want %d %v", err, code, enh)
	}
}

func TestNewRefusesAuthWithoutTLS(t *testing.T) {
	t.Parallel()
	_, err := New(Options{Sink: &recordSink{}, Route: allowAll, Auth: fakeAuth{}})
	if err == nil || !strings.Contains(err.Error(), "TLS") {
		t.Fatalf("Auth without TLSConfig: %v", err)
	}
}

func TestAuthOnlyAfterSTARTTLS(t *testing.T) {
	t.Parallel()
	s, sink, fx := startAuthServer(t, nil)
	plain := smtpClient(t, s.Addr().String(), nil)
	if ok, _ := plain.Extension("STARTTLS"); !ok {
		t.Fatal("STARTTLS not offered")
	}
	if ok, _ := plain.Extension("AUTH"); ok {
		t.Fatal("AUTH offered before TLS")
	}
	if err := plain.Auth(sasl.NewPlainClient("", "alice", "correct horse")); err == nil {
		t.Fatal("AUTH accepted without TLS")
	}
	c := smtpClient(t, s.Addr().String(), fx.client(fx.ca))
	if ok, mechs := c.Extension("AUTH"); !ok || mechs != "PLAIN LOGIN" {
		t.Fatalf("AUTH after TLS: %v %q", ok, mechs)
	}
	if err := c.Auth(sasl.NewPlainClient("", "alice", "correct horse")); err != nil {
		t.Fatal(err)
	}
	if err := c.SendMail("alice@contoso.com", []string{"a@example.org"}, strings.NewReader("Subject: x\r\n\r\nover TLS\r\n")); err != nil {
		t.Fatal(err)
	}
	env, data := sink.last(t)
	if !strings.Contains(string(data), " with ESMTPSA id "+string(env.ID)) || !strings.HasSuffix(string(data), "\r\nSubject: x\r\n\r\nover TLS\r\n") {
		t.Fatalf("stored %q", data)
	}
	if env.Client != "127.0.0.1" {
		t.Fatalf("client address lost under TLS: %q", env.Client)
	}
}

func TestAuthSendersAndLogin(t *testing.T) {
	t.Parallel()
	s, _, fx := startAuthServer(t, nil)
	c := smtpClient(t, s.Addr().String(), fx.client(fx.ca))
	if err := c.Auth(sasl.NewLoginClient("bob", "battery staple")); err != nil {
		t.Fatalf("LOGIN: %v", err)
	}
	wantCode(t, c.Mail("alice@contoso.com", nil), 550, smtp.EnhancedCode{5, 7, 1})
	if err := c.Mail("bob@contoso.com", nil); err != nil {
		t.Fatal(err)
	}
}

func TestAuthFailuresAreAlikeAndLimited(t *testing.T) {
	t.Parallel()
	s, _, fx := startAuthServer(t, func(o *Options) { o.MaxAuthFailures = 2 })
	c := smtpClient(t, s.Addr().String(), fx.client(fx.ca))
	var took []time.Duration
	for _, cred := range [][2]string{{"mallory", "x"}, {"alice", "wrong"}} {
		start := time.Now()
		wantCode(t, c.Auth(sasl.NewPlainClient("", cred[0], cred[1])), 535, smtp.EnhancedCode{5, 7, 8})
		took = append(took, time.Since(start))
	}
	// Third attempt from the same address, right password: refused
	// without being checked.
	start := time.Now()
	wantCode(t, c.Auth(sasl.NewPlainClient("", "alice", "correct horse")), 454, smtp.EnhancedCode{4, 7, 0})
	took = append(took, time.Since(start))
	t.Logf("unknown user %v, wrong password %v, limited %v (floor 150ms)", took[0], took[1], took[2])
	for _, d := range took {
		if d < 150*time.Millisecond {
			t.Fatalf("a failure answered in %v, under the padding floor", d)
		}
	}
}

func TestCertificateReloadAndImplicitTLS(t *testing.T) {
	t.Parallel()
	s, _, fx := startAuthServer(t, func(o *Options) { o.ImplicitTLSAddr = "127.0.0.1:0" })
	dialTLS := func(ca *tlstest.CA) error {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", s.ImplicitTLSAddr().String(), fx.client(ca))
		if err != nil {
			return err
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		c := smtp.NewClient(conn)
		if err := c.Hello("client.test"); err != nil {
			return err
		}
		if ok, _ := c.Extension("AUTH"); !ok {
			return errors.New("AUTH not offered over implicit TLS")
		}
		return c.Quit()
	}
	if err := dialTLS(fx.ca); err != nil {
		t.Fatal(err)
	}
	next := fx.issue(t) // as a certificate renewed on disk would be
	if err := dialTLS(next); err != nil {
		t.Fatalf("reloaded certificate not served: %v", err)
	}
	if err := dialTLS(fx.ca); err == nil {
		t.Fatal("the old certificate is still served")
	}
}

// An account's senders are checked on the same canonical address that is
// stored and sent on: no quoting, escape, route or parameter smuggled into
// MAIL FROM gets a sender outside the account's list through. Every
// accepted sender, as the fake Exchange's strict parser reads the stored
// envelope, is billing@app.example or at trusted.example.
func TestAuthSendersCannotBeBypassed(t *testing.T) {
	t.Parallel()
	hash, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	users, err := NewUsers([]User{{Name: "app", Hash: hash, Senders: []string{"billing@app.example", "*@trusted.example"}}})
	if err != nil {
		t.Fatal(err)
	}
	s, sink, _, fx := startTLSServer(t, func(o *Options) { o.Auth = users; o.AllowedNetworks = nil })
	var c *client
	connect := func() {
		c = dialMode(t, s, fx, modeSTARTTLS)
		c.reply()
		c.ehlo("EHLO app")
		c.cmd("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00app\x00pw")), "235")
	}
	connect()
	accepted := 0
	for _, local := range []string{"billing", `"billing"`, `"billing@app.example"`, `"billing@app.example> x"`,
		`"victim@bank.example> ENVID=x"`, `"victim@bank.example> AUTH=<x"`, `"x@trusted.example"`, `"a b"`, `"a\"b"`,
		"victim", `"victim@bank.example"`, "billing@app.example", `victim%bank.example`} {
		for _, domain := range []string{"app.example", "trusted.example", "TRUSTED.example", "bank.example",
			"trusted.example> SIZE=1", "bank.example> x@trusted.example", "[192.0.2.1]", "trusted．example"} {
			for _, route := range []string{"", "@trusted.example:"} {
				line := "MAIL FROM:<" + route + local + "@" + domain + ">"
				c.send(line + "\r\n")
				if got := c.reply(); !strings.HasPrefix(got, "250 ") {
					switch {
					case strings.HasPrefix(got, "421 4.7.0 Too many errors"):
						connect() // the third syntax error ends a session
					case !strings.HasPrefix(got, "5"):
						t.Fatalf("%q: %q", line, got)
					}
					continue
				}
				accepted++
				before := len(sink.envs)
				c.send("RCPT TO:<x@fabrikam.example>\r\nDATA\r\n")
				c.reply()
				c.reply()
				c.cmd("Subject: x\r\n\r\nx\r\n.", "250 ")
				if len(sink.envs) != before+1 {
					t.Fatalf("%q: not stored", line)
				}
				env, _ := sink.last(t)
				_, p, params, err := exchangetest.ParseCommand("MAIL FROM:<"+env.From+">", true)
				d := strings.ToLower(p.Domain)
				if err != nil || len(params) != 0 || !(strings.EqualFold(p.Mailbox(), "billing@app.example") || d == "trusted.example") {
					t.Fatalf("%q was stored as %q (%v): outside the account's senders", line, env.From, err)
				}
			}
		}
	}
	if accepted < 10 {
		t.Errorf("only %d senders accepted: the test lost its point", accepted)
	}
}
