package upstream

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/o365relay/o365relay/config/secret"
	"github.com/o365relay/o365relay/config/tlstest"
	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/exchangetest"
	"github.com/o365relay/o365relay/relay/reply"
	"github.com/o365relay/o365relay/token"
)

const (
	tenant  = "tenant-1"
	appID   = "app-1"
	mailbox = "relay@contoso.test"
)

// keys are generated once for the package: RSA generation is slow under
// -race and the keys are never modified.
var (
	tokenKey = sync.OnceValues(func() (*rsa.PrivateKey, error) { return rsa.GenerateKey(rand.Reader, 2048) })
	wrongKey = sync.OnceValues(func() (*rsa.PrivateKey, error) { return rsa.GenerateKey(rand.Reader, 2048) })
)

func mustKey(t testing.TB, f func() (*rsa.PrivateKey, error)) *rsa.PrivateKey {
	t.Helper()
	k, err := f()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// stubTokens is a token.Source whose tokens are signed with key; the first
// `bad` tokens handed out are signed with a key the fake does not trust.
type stubTokens struct {
	t       testing.TB
	key     *rsa.PrivateKey
	wrong   *rsa.PrivateKey
	clock   func() time.Time
	life    time.Duration
	mu      sync.Mutex
	bad     int
	cur     token.Token
	minted  int
	refresh int
	err     error
}

func newStubTokens(t testing.TB, bad int, clock func() time.Time) *stubTokens {
	s := &stubTokens{t: t, key: mustKey(t, tokenKey), wrong: mustKey(t, wrongKey), clock: clock, life: time.Hour, bad: bad}
	if s.clock == nil {
		s.clock = time.Now
	}
	return s
}

func (s *stubTokens) mint() token.Token {
	k := s.key
	if s.minted < s.bad {
		k = s.wrong
	}
	s.minted++
	now := s.clock()
	v, err := exchangetest.SignToken(k, exchangetest.Claims{AppID: appID, Tenant: tenant, IssuedAt: now, Expires: now.Add(s.life)})
	if err != nil {
		s.t.Error(err)
	}
	return token.Token{Value: v, ExpiresOn: now.Add(s.life)}
}

func (s *stubTokens) Token(context.Context) (token.Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return token.Token{}, s.err
	}
	if s.cur.Value == "" {
		s.cur = s.mint()
	}
	return s.cur, nil
}

func (s *stubTokens) Refresh(_ context.Context, rejected token.Token) (token.Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refresh++
	if rejected.Value == s.cur.Value {
		s.cur = s.mint()
	}
	return s.cur, nil
}

func (s *stubTokens) refreshes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refresh
}

func (s *stubTokens) current() secret.Secret {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur.Value
}

type env struct {
	fake   *exchangetest.Server
	ca     *tlstest.CA
	tokens *stubTokens
	client *Client
	opts   Options
}

type setup struct {
	fake    func(*exchangetest.Options)
	client  func(*Options)
	badToks int
	clock   func() time.Time
}

// newEnv starts a fake Exchange trusting tokenKey and a Client for it.
func newEnv(t testing.TB, s setup) *env {
	t.Helper()
	ca, err := tlstest.NewCA("upstream test CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.ServerCert()
	if err != nil {
		t.Fatal(err)
	}
	fo := exchangetest.Options{
		TLS: cert, TokenKey: &mustKey(t, tokenKey).PublicKey, Tenant: tenant,
		Mailboxes: map[string]exchangetest.Mailbox{
			mailbox: {Apps: []string{appID}, SendAs: []string{"noreply@contoso.test"}},
		},
		Clock: s.clock,
	}
	if s.fake != nil {
		s.fake(&fo)
	}
	fake, err := exchangetest.NewServer(fo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := fake.Close(); err != nil {
			t.Errorf("fake Close: %v", err)
		}
	})
	e := &env{fake: fake, ca: ca, tokens: newStubTokens(t, s.badToks, s.clock)}
	e.opts = Options{
		Addr: fake.Addr(), ServerName: "localhost", RootCAs: ca.Pool(), Tokens: e.tokens,
		HelloName: "relay.test", ConnectTimeout: 5 * time.Second, CommandTimeout: 10 * time.Second,
		DataTimeout: time.Minute, Clock: s.clock,
	}
	if s.client != nil {
		s.client(&e.opts)
	}
	c, err := New(e.opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("client Close: %v", err)
		}
	})
	e.client = c
	return e
}

func testEnv(to ...string) *envelope.Envelope {
	if len(to) == 0 {
		to = []string{"someone@example.test"}
	}
	return &envelope.Envelope{ID: envelope.NewID(time.Now()), From: mailbox, To: to, Mailbox: mailbox}
}

const simpleBody = "From: relay@contoso.test\r\nTo: someone@example.test\r\nSubject: hi\r\n\r\nhello\r\n"

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// wantReply checks err is a *reply.Error with the given code, enhanced
// code, stage and temporariness, and that it does not leak the token.
func wantReply(t testing.TB, err error, code int, enh smtp.EnhancedCode, stage reply.Stage, tokens ...secret.Secret) *reply.Error {
	t.Helper()
	var re *reply.Error
	if !errors.As(err, &re) {
		t.Fatalf("error %v (%T) is not a *reply.Error", err, err)
	}
	if re.Code != code || re.Enhanced != reply.EnhancedCode(enh) || re.Stage != stage {
		t.Errorf("got %d %v at %q (%v), want %d %v at %q", re.Code, re.Enhanced, re.Stage, err, code, enh, stage)
	}
	if re.Temporary() != (code/100 == 4) || reply.Temporary(err) != (code/100 == 4) {
		t.Errorf("Temporary() = %v for %d", re.Temporary(), code)
	}
	for _, tok := range tokens {
		if tok != "" && strings.Contains(err.Error(), tok.Reveal()) {
			t.Errorf("error text contains the token")
		}
	}
	return re
}
