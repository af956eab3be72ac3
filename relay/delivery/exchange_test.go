package delivery

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/o365relay/o365relay/config/tlstest"
	"github.com/o365relay/o365relay/config/waitfor"
	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/exchangetest"
	"github.com/o365relay/o365relay/relay/spool"
	"github.com/o365relay/o365relay/relay/upstream"
	"github.com/o365relay/o365relay/token"
)

// Tests of the whole delivery path against the strict fake Exchange: spool,
// scheduler, upstream pool over verified TLS and XOAUTH2.

const (
	exoTenant = "tenant-d"
	exoApp    = "app-d"
	exoBox    = "relay@contoso.example"
)

var exoKey = sync.OnceValues(func() (*rsa.PrivateKey, error) { return rsa.GenerateKey(rand.Reader, 2048) })

// exoTokens mints real tokens for the fake; Refresh mints a new one.
type exoTokens struct {
	t         testing.TB
	key       *rsa.PrivateKey
	mu        sync.Mutex
	cur       token.Token
	refreshes int
}

func (s *exoTokens) mint() token.Token {
	now := time.Now()
	v, err := exchangetest.SignToken(s.key, exchangetest.Claims{AppID: exoApp, Tenant: exoTenant, IssuedAt: now, Expires: now.Add(time.Hour)})
	if err != nil {
		s.t.Error(err)
	}
	return token.Token{Value: v, ExpiresOn: now.Add(time.Hour)}
}

func (s *exoTokens) Token(context.Context) (token.Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur.Value == "" {
		s.cur = s.mint()
	}
	return s.cur, nil
}

func (s *exoTokens) Refresh(_ context.Context, old token.Token) (token.Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refreshes++
	if old.Value == s.cur.Value {
		s.cur = s.mint()
	}
	return s.cur, nil
}

// warpClock is real time plus an offset that long waits skip: After(d) for
// a hold or backoff fires after a few real milliseconds and moves the
// clock on by d, so an hour's pause takes no time. Waits over two hours
// (the rescan timer, set above that) are real. (testing/synctest cannot
// stand in here: these tests talk to the imitation of Exchange over real
// TCP and TLS, which a bubble does not isolate; timers_test.go uses it.)
type warpClock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (w *warpClock) Now() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return time.Now().Add(w.offset)
}

func (w *warpClock) After(d time.Duration) <-chan time.Time {
	const real = 5 * time.Millisecond
	if d > real && d <= 2*time.Hour {
		w.mu.Lock()
		w.offset += d - real
		w.mu.Unlock()
		return time.After(real)
	}
	return time.After(d)
}

type exoEnv struct {
	fake   *exchangetest.Server
	up     *upstream.Client
	sp     *spool.Spool
	s      *Scheduler
	tokens *exoTokens
	clk    *warpClock
}

type exoSetup struct {
	mailboxes []string
	upstream  func(*upstream.Options)
	sched     func(*Options)
	discard   bool
}

func newExoEnv(t testing.TB, o exoSetup) *exoEnv {
	t.Helper()
	key, err := exoKey()
	if err != nil {
		t.Fatal(err)
	}
	ca, err := tlstest.NewCA("delivery test CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.ServerCert()
	if err != nil {
		t.Fatal(err)
	}
	if len(o.mailboxes) == 0 {
		o.mailboxes = []string{exoBox}
	}
	mbx := map[string]exchangetest.Mailbox{}
	for _, m := range o.mailboxes {
		mbx[m] = exchangetest.Mailbox{Apps: []string{exoApp}}
	}
	fake, err := exchangetest.NewServer(exchangetest.Options{TLS: cert, TokenKey: &key.PublicKey, Tenant: exoTenant, Mailboxes: mbx, Discard: o.discard})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := fake.Close(); err != nil {
			t.Error(err)
		}
	})
	e := &exoEnv{fake: fake, tokens: &exoTokens{t: t, key: key}, clk: &warpClock{}}
	uo := upstream.Options{Addr: fake.Addr(), ServerName: "localhost", RootCAs: ca.Pool(), Tokens: e.tokens,
		HelloName: "relay.test", ConnectTimeout: 5 * time.Second, CommandTimeout: 10 * time.Second, DataTimeout: 30 * time.Second}
	if o.upstream != nil {
		o.upstream(&uo)
	}
	if e.up, err = upstream.New(uo); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.up.Close(); err != nil {
			t.Error(err)
		}
	})
	if e.sp, err = spool.Open(spool.Options{Dir: t.TempDir(), Fsync: false, Clock: e.clk.Now}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.sp.Close(); err != nil {
			t.Error(err)
		}
	})
	so := Options{Spool: e.sp, Forwarder: e.up, Workers: 3 * len(o.mailboxes),
		Backoff: Backoff{Min: 20 * time.Millisecond, Max: 200 * time.Millisecond, Factor: 2, Jitter: 0.2},
		Clock:   e.clk.Now, After: e.clk.After, RescanEvery: 3 * time.Hour,
		// As the daemon runs it: three attempts per mailbox, no pacing.
		Limits: func(string) Limits { return Limits{Connections: 3} }}
	if o.sched != nil {
		o.sched(&so)
	}
	if e.s, err = New(withSettings(so)); err != nil {
		t.Fatal(err)
	}
	return e
}

// put queues n messages from sender for mailbox, each with a unique
// subject.
func (e *exoEnv) put(t testing.TB, n int, sender, mailbox string) []envelope.ID {
	t.Helper()
	var ids []envelope.ID
	for i := range n {
		env := &envelope.Envelope{ID: envelope.NewID(time.Now()), From: sender, To: []string{fmt.Sprintf("r%d@example.org", i)}, Mailbox: mailbox, Received: e.clk.Now()}
		body := fmt.Sprintf("From: %s\r\nSubject: %s %d\r\n\r\nbody %d\r\n", sender, env.ID, i, i)
		if err := e.sp.Put(env, strings.NewReader(body)); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, env.ID)
		e.s.Enqueued(env.ID)
	}
	return ids
}

// run delivers until the queue is empty and stops the scheduler. The
// queue is polled: these tests run on real time (the network is real), and
// the spool has no signal for "empty".
func (e *exoEnv) run(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	waitfor.Check(t, "an empty queue", func() error {
		q, err := e.sp.List()
		if err != nil {
			return err
		}
		if len(q) > 0 {
			return fmt.Errorf("%d messages still queued; first: %+v", len(q), q[0].State)
		}
		return nil
	})
}

// check asserts every message is either delivered exactly once or in
// failed/, the fake saw no violation and never more than limit concurrent
// sessions per mailbox.
func (e *exoEnv) check(t testing.TB, ids []envelope.ID, wantFailed, limit int) {
	t.Helper()
	failed, err := e.sp.ListFailed()
	if err != nil {
		t.Fatal(err)
	}
	msgs := e.fake.Messages()
	if len(msgs) > 0 && msgs[0].Data == nil { // Discard: count only
		if len(msgs)+len(failed) != len(ids) {
			t.Errorf("%d delivered + %d failed of %d", len(msgs), len(failed), len(ids))
		}
		ids = nil
	}
	seen := map[string]int{}
	for _, m := range msgs {
		if m.Data == nil {
			continue
		}
		i := bytes.Index(m.Data, []byte("Subject: "))
		seen[strings.Fields(string(m.Data[i+9:]))[0]]++
	}
	isFailed := map[envelope.ID]bool{}
	for _, f := range failed {
		isFailed[f.Envelope.ID] = true
	}
	for _, id := range ids {
		n := seen[string(id)]
		switch {
		case isFailed[id] && n != 0:
			t.Errorf("%s failed and delivered", id)
		case !isFailed[id] && n != 1:
			t.Errorf("%s delivered %d times", id, n)
		}
	}
	if ids != nil && len(failed) != wantFailed {
		t.Errorf("%d failed, want %d", len(failed), wantFailed)
	}
	st := e.fake.Stats()
	for mb, n := range st.MaxConcurrentPerMailbox {
		if n > limit {
			t.Errorf("%s: %d concurrent sessions, limit %d", mb, n, limit)
		}
	}
	if v := e.fake.Violations(); len(v) != 0 {
		t.Errorf("violations %q", v)
	}
}

func smtpError(code int, enh smtp.EnhancedCode, text string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: text}
}

// Every fault ends with every message delivered exactly once (or failed,
// for a permanent error), within three sessions per mailbox at any moment.
func TestFaultsAgainstExchange(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		faults []exchangetest.Fault
		failed int
		cold   bool // inject before the pool has connections
	}{
		{"432 4.3.2 on AUTH", []exchangetest.Fault{{Stage: "auth", Reply: smtpError(432, smtp.EnhancedCode{4, 3, 2}, "Concurrent connections limit exceeded"), Times: 4}}, 0, true},
		{"421 mid-session", []exchangetest.Fault{
			{Stage: "mail", Reply: smtpError(421, smtp.EnhancedCode{4, 3, 2}, "Service not available, closing transmission channel"), Times: 3},
			{Stage: "rcpt", Reply: smtpError(421, smtp.EnhancedCode{4, 4, 2}, "Connection dropped"), Times: 2}}, 0, false},
		{"dropped during DATA", []exchangetest.Fault{{Stage: "data", Drop: true, Times: 3}, {Stage: "dot", Drop: true, Times: 2}}, 0, false},
		{"554 5.2.0 quota", []exchangetest.Fault{{Stage: "dot", Reply: smtpError(554, smtp.EnhancedCode{5, 2, 0}, "STOREDRV.Submission.Exception:SubmissionQuotaExceededException"), Times: 2}}, 0, false},
		{"501 5.5.127 token expired", []exchangetest.Fault{{Stage: "mail", Reply: smtpError(501, smtp.EnhancedCode{5, 5, 127}, "token expired"), Times: 3}}, 0, false},
		{"550 5.7.60 permanent", []exchangetest.Fault{{Stage: "mail", Reply: smtpError(550, smtp.EnhancedCode{5, 7, 60}, "SMTP; Client does not have permissions to send as this sender"), Times: 2}}, 2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newExoEnv(t, exoSetup{})
			var ids []envelope.ID
			if !tc.cold {
				// Warm the pool first so faults hit pooled and new sessions.
				ids = e.put(t, 3, exoBox, exoBox)
				e.run(t)
			}
			for _, f := range tc.faults {
				e.fake.Inject(f)
			}
			ids = append(ids, e.put(t, 15, exoBox, exoBox)...)
			e.run(t)
			if n := e.fake.PendingFaults(); n != 0 {
				t.Errorf("%d fault uses never fired", n)
			}
			e.check(t, ids, tc.failed, 3)
		})
	}
}

// 500 messages from one sender: at most 3 sessions and 3 AUTHs in all (a
// pooled connection is never closed while the mailbox is within its limit).
func TestSteadyStateReusesThreeConnections(t *testing.T) {
	t.Parallel()
	e := newExoEnv(t, exoSetup{})
	ids := e.put(t, 500, exoBox, exoBox)
	e.run(t)
	e.check(t, ids, 0, 3)
	if st := e.fake.Stats(); st.Sessions > 3 || st.Auths > 3 {
		t.Errorf("%d sessions, %d AUTHs for 500 messages", st.Sessions, st.Auths)
	}
}

// Pacing through the whole path on the injected clock: 40 messages at
// 20/min leave as a burst of 20, then one every 3 s, and no real minute
// passes.
func TestPacingAgainstExchange(t *testing.T) {
	t.Parallel()
	e := newExoEnv(t, exoSetup{sched: func(o *Options) {
		o.Limits = func(string) Limits { return Limits{Rate: 20, Connections: 3} }
	}})
	start := e.clk.Now()
	ids := e.put(t, 40, exoBox, exoBox)
	e.run(t)
	e.check(t, ids, 0, 3)
	if d := e.clk.Now().Sub(start); d < 60*time.Second {
		t.Errorf("40 messages at 20/min took %v on the relay's clock, want ≥ 60 s", d)
	}
}
