package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/o365relay/o365relay/relay/exchangetest"
	"github.com/o365relay/o365relay/relay/reply"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// Three callers at a time (the scheduler's limit for one mailbox) share
// three connections.
func TestPoolConcurrentDeliveries(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	const msgs, workers = 200, 3
	work := make(chan int)
	errs := make(chan error, msgs)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				body := fmt.Sprintf("From: relay@contoso.test\r\nSubject: %d\r\n\r\nmessage %d\r\n", i, i)
				_, err := e.client.Deliver(ctxT(t), testEnv(), strings.NewReader(body))
				errs <- err
			}
		}()
	}
	for i := range msgs {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := len(e.fake.Messages()); n != msgs {
		t.Errorf("fake has %d messages", n)
	}
	fs, cs := e.fake.Stats(), e.client.Stats()
	if fs.Sessions > 3 || fs.Auths > 3 || fs.MaxConcurrentPerMailbox[mailbox] > 3 || cs.Dials > 3 || cs.Handshakes > 3 || cs.Auths > 3 {
		t.Errorf("too many connections: fake %+v client %+v", fs, cs)
	}
	if cs.Open < 1 || cs.Open > 3 {
		t.Errorf("open connections %d", cs.Open)
	}
	checkClean(t, e)
}

func TestPoolIdleExpiry(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	e := newEnv(t, setup{clock: clk.Now})
	deliver := func() {
		t.Helper()
		if _, err := e.client.Deliver(ctxT(t), testEnv(), strings.NewReader(simpleBody)); err != nil {
			t.Fatal(err)
		}
	}
	deliver()
	deliver()
	if st := e.client.Stats(); st.Open != 1 || st.Dials != 1 {
		t.Fatalf("stats %+v", st)
	}
	clk.Advance(e.client.opts.IdleTimeout - time.Second)
	if n := e.client.reap(clk.Now()); n != 0 {
		t.Errorf("reaped %d connections before the idle timeout", n)
	}
	clk.Advance(time.Second)
	if n := e.client.reap(clk.Now()); n != 1 {
		t.Errorf("reaped %d, want 1", n)
	}
	if st := e.client.Stats(); st.Open != 0 {
		t.Errorf("stats %+v", st)
	}
	deliver()
	if st := e.client.Stats(); st.Dials != 2 || st.Open != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestPoolRetiresOldConnections(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	e := newEnv(t, setup{clock: clk.Now, client: func(o *Options) { o.IdleTimeout = time.Hour }})
	deliver := func() {
		t.Helper()
		if _, err := e.client.Deliver(ctxT(t), testEnv(), strings.NewReader(simpleBody)); err != nil {
			t.Fatal(err)
		}
	}
	deliver()
	clk.Advance(e.client.opts.MaxConnAge - time.Second)
	deliver()
	if st := e.client.Stats(); st.Dials != 1 {
		t.Fatalf("stats %+v", st)
	}
	clk.Advance(time.Second)
	deliver()
	if st := e.client.Stats(); st.Dials != 2 || st.Open != 1 {
		t.Errorf("connection past MaxConnAge reused: %+v", st)
	}
}

func TestPoolRetiresBeforeTokenExpiry(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	e := newEnv(t, setup{clock: clk.Now, client: func(o *Options) { o.IdleTimeout = time.Hour; o.MaxConnAge = time.Hour }})
	e.tokens.life = 5 * time.Minute
	deliver := func() {
		t.Helper()
		if _, err := e.client.Deliver(ctxT(t), testEnv(), strings.NewReader(simpleBody)); err != nil {
			t.Fatal(err)
		}
	}
	deliver()
	clk.Advance(2*time.Minute + 59*time.Second) // 2m01s left
	deliver()
	if st := e.client.Stats(); st.Dials != 1 {
		t.Fatalf("stats %+v", st)
	}
	clk.Advance(2 * time.Second) // 1m59s left
	e.tokens.mu.Lock()
	e.tokens.cur = e.tokens.mint() // the source has refreshed by now
	e.tokens.mu.Unlock()
	deliver()
	if st := e.client.Stats(); st.Dials != 2 {
		t.Errorf("connection authenticated with an expiring token reused: %+v", st)
	}
}

func TestPoolReplacesBrokenConnections(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	deliver := func() {
		t.Helper()
		if _, err := e.client.Deliver(ctxT(t), testEnv(), strings.NewReader(simpleBody)); err != nil {
			t.Fatal(err)
		}
	}
	deliver()
	// Exchange closing the session (421) and a connection that died while
	// idle: the message goes through on a fresh connection.
	e.fake.Inject(exchangetest.Fault{Stage: "mail", Reply: smtpErr(421, smtp.EnhancedCode{4, 3, 2}, "Service not available, closing transmission channel")})
	deliver()
	e.fake.Inject(exchangetest.Fault{Stage: "mail", Drop: true})
	deliver()
	e.fake.Inject(exchangetest.Fault{Stage: "rcpt", Drop: true})
	deliver()
	if st := e.client.Stats(); st.Dials != 4 || st.Open != 1 {
		t.Errorf("stats %+v", st)
	}
	if n := len(e.fake.Messages()); n != 4 {
		t.Errorf("%d messages", n)
	}
	// A fresh connection is not retried: the failure is reported.
	e.fake.Inject(exchangetest.Fault{Stage: "mail", Drop: true, Times: 2})
	_, err := e.client.Deliver(ctxT(t), testEnv(), strings.NewReader(simpleBody))
	wantReply(t, err, 451, smtp.EnhancedCode{4, 4, 2}, reply.StageMail)
	checkClean(t, e)
}

// A refusal from a live session (554 after the dot, 451 at MAIL, every
// recipient refused) leaves the session usable after RSET: deferrals do not
// cost a TLS handshake and AUTH each. A 421 or a dropped connection is
// never reused (TestPoolReplacesBrokenConnections above).
func TestPoolReusesSessionAfterRefusal(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	faults := []struct {
		f    exchangetest.Fault
		code int
		enh  smtp.EnhancedCode
		st   reply.Stage
	}{
		{exchangetest.Fault{Stage: "dot", Reply: smtpErr(554, smtp.EnhancedCode{5, 2, 0}, "SubmissionQuotaExceededException")}, 554, smtp.EnhancedCode{5, 2, 0}, reply.StageData},
		{exchangetest.Fault{Stage: "mail", Reply: smtpErr(451, smtp.EnhancedCode{4, 7, 500}, "Server busy")}, 451, smtp.EnhancedCode{4, 7, 500}, reply.StageMail},
		{exchangetest.Fault{Stage: "rcpt", Reply: smtpErr(452, smtp.EnhancedCode{4, 5, 3}, "Too many recipients")}, 452, smtp.EnhancedCode{4, 5, 3}, reply.StageRcpt},
	}
	for _, f := range faults {
		e.fake.Inject(f.f)
		_, err := e.client.Deliver(ctxT(t), testEnv(), strings.NewReader(simpleBody))
		wantReply(t, err, f.code, f.enh, f.st)
		if st := e.client.Stats(); st.Open != 1 || st.Dials != 1 {
			t.Errorf("after %d: %+v, want the one session kept", f.code, st)
		}
	}
	if _, err := e.client.Deliver(ctxT(t), testEnv(), strings.NewReader(simpleBody)); err != nil {
		t.Fatal(err)
	}
	if st := e.client.Stats(); st.Dials != 1 || st.Auths != 1 {
		t.Errorf("stats %+v: the next message did not reuse the session", st)
	}
	checkClean(t, e)
}

// blockingBody blocks its first Read until release is closed.
type blockingBody struct {
	started chan struct{}
	release chan struct{}
	r       io.Reader
	once    sync.Once
}

func (b *blockingBody) Read(p []byte) (int, error) {
	b.once.Do(func() {
		close(b.started)
		<-b.release
	})
	return b.r.Read(p)
}

func TestPoolDisabled(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{client: func(o *Options) { o.PoolDisabled = true }})
	for range 3 {
		if _, err := e.client.Deliver(ctxT(t), testEnv(), strings.NewReader(simpleBody)); err != nil {
			t.Fatal(err)
		}
	}
	if st := e.client.Stats(); st.Dials != 3 || st.Auths != 3 || st.Open != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestCloseClosesIdle(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	if _, err := e.client.Deliver(ctxT(t), testEnv(), strings.NewReader(simpleBody)); err != nil {
		t.Fatal(err)
	}
	if err := e.client.Close(); err != nil {
		t.Fatal(err)
	}
	if st := e.client.Stats(); st.Open != 0 {
		t.Errorf("stats %+v", st)
	}
	_, err := e.client.Deliver(ctxT(t), testEnv(), strings.NewReader(simpleBody))
	var re *reply.Error
	if !errors.As(err, &re) || !re.Temporary() {
		t.Errorf("Deliver after Close = %v", err)
	}
}

// BenchmarkDeliver compares handshakes per 1000 messages with and without
// the pool (4 concurrent senders, one mailbox).
func BenchmarkDeliver(b *testing.B) {
	for _, pool := range []bool{true, false} {
		b.Run(fmt.Sprintf("pool=%v", pool), func(b *testing.B) {
			e := newEnv(b, setup{
				fake:   func(o *exchangetest.Options) { o.Discard = true },
				client: func(o *Options) { o.PoolDisabled = !pool },
			})
			b.SetParallelism(1)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := e.client.Deliver(context.Background(), testEnv(), strings.NewReader(simpleBody)); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			st := e.client.Stats()
			b.ReportMetric(float64(st.Handshakes)*1000/float64(b.N), "handshakes/1000msgs")
			b.ReportMetric(float64(st.Auths)*1000/float64(b.N), "auths/1000msgs")
		})
	}
}

// 501 5.5.127 on a pooled session: the token is refreshed, the idle
// sessions that used it are dropped, and the message goes out on a new
// connection instead of failing.
func TestTokenExpiredReconnects(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	deliver := func() {
		t.Helper()
		if _, err := e.client.Deliver(ctxT(t), testEnv(), strings.NewReader(simpleBody)); err != nil {
			t.Fatal(err)
		}
	}
	deliver()
	e.fake.Inject(exchangetest.Fault{Stage: "mail", Reply: smtpErr(501, smtp.EnhancedCode{5, 5, 127}, "token expired")})
	deliver()
	if e.tokens.refreshes() != 1 {
		t.Errorf("token not refreshed: %d refreshes", e.tokens.refreshes())
	}
	if st := e.client.Stats(); st.Dials != 2 || st.Auths != 2 || st.Open != 1 {
		t.Errorf("stats %+v", st)
	}
	if n := len(e.fake.Messages()); n != 2 {
		t.Errorf("%d messages", n)
	}
	checkClean(t, e)
}

// 432 4.3.2 at AUTH is reported as it is, whatever connections we hold:
// the delivery scheduler owns the connection limit and its reaction.
func TestConcurrencyLimitReported(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	e.fake.Inject(exchangetest.Fault{Stage: "auth", Reply: smtpErr(432, smtp.EnhancedCode{4, 3, 2}, "Concurrent connections limit exceeded")})
	_, err := e.client.Deliver(ctxT(t), testEnv(), strings.NewReader(simpleBody))
	re := wantReply(t, err, 432, smtp.EnhancedCode{4, 3, 2}, reply.StageAuth)
	if re == nil || !ConcurrencyLimited(re) {
		t.Errorf("ConcurrencyLimited(%v) = false", err)
	}
	checkClean(t, e)
}
