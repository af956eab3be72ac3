package delivery

import (
	"bytes"
	"context"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/reply"
	"github.com/o365relay/o365relay/relay/spool"
)

var t0 = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Set(t time.Time) { c.mu.Lock(); defer c.mu.Unlock(); c.now = t }

// fake is a Forwarder scripted call by call.
type fake struct {
	mu    sync.Mutex
	calls []call
	steps []func(ctx context.Context, env *envelope.Envelope, body []byte) (*envelope.Result, error)
}

type call struct {
	to   []string
	body []byte
	at   time.Time // time.Now() at the call: the bubble's clock in a synctest test
}

func (f *fake) Deliver(ctx context.Context, env *envelope.Envelope, body io.Reader) (*envelope.Result, error) {
	b, err := io.ReadAll(body)
	if err != nil {
		return nil, reply.Wrap(err, 451, reply.EnhancedCode{4, 3, 0}, "read")
	}
	f.mu.Lock()
	n := len(f.calls)
	f.calls = append(f.calls, call{to: env.To, body: b, at: time.Now()})
	step := f.steps[min(n, len(f.steps)-1)]
	f.mu.Unlock()
	return step(ctx, env, b)
}

func (f *fake) n() int { f.mu.Lock(); defer f.mu.Unlock(); return len(f.calls) }

func ok(_ context.Context, env *envelope.Envelope, _ []byte) (*envelope.Result, error) {
	return &envelope.Result{Accepted: env.To, Reply: "250 2.0.0 OK <x@prod.outlook.com>"}, nil
}

func fails(re *reply.Error) func(context.Context, *envelope.Envelope, []byte) (*envelope.Result, error) {
	return func(context.Context, *envelope.Envelope, []byte) (*envelope.Result, error) { return nil, re }
}

type fixture struct {
	sp    *spool.Spool
	s     *Scheduler
	fw    *fake
	clk   *clock
	dir   string
	envID envelope.ID
}

func setup(t *testing.T, fw *fake) *fixture {
	t.Helper()
	clk := &clock{now: t0}
	dir := t.TempDir()
	sp, err := spool.Open(spool.Options{Dir: dir, Fsync: true, Clock: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sp.Close(); err != nil {
			t.Error(err)
		}
	})
	s, err := New(withSettings(Options{Spool: sp, Forwarder: fw, Clock: clk.Now, Rand: func() float64 { return 0.5 }}))
	if err != nil {
		t.Fatal(err)
	}
	env := &envelope.Envelope{ID: envelope.NewID(t0), From: "app@example.com", To: []string{"a@example.org", "b@example.org"}, Mailbox: "relay@example.com", Received: t0}
	if err := sp.Put(env, bytes.NewReader([]byte("Subject: hi\r\n\r\nbody\r\n"))); err != nil {
		t.Fatal(err)
	}
	return &fixture{sp: sp, s: s, fw: fw, clk: clk, dir: dir, envID: env.ID}
}

// work is one worker's turn: the earliest due message is attempted now,
// whatever its due time, and released as a worker releases it.
func (f *fixture) work(t *testing.T) envelope.ID {
	t.Helper()
	f.s.mu.Lock()
	id, at, ok := f.s.due.peek()
	if !ok {
		f.s.mu.Unlock()
		t.Fatal("nothing queued")
	}
	f.s.due.remove(id)
	f.s.running[id] = &run{done: make(chan struct{}), at: at}
	f.s.mu.Unlock()
	f.s.attemptOwned(context.Background(), id)
	return id
}

func (f *fixture) state(t *testing.T) spool.State {
	t.Helper()
	e, err := f.sp.Get(f.envID)
	if err != nil {
		t.Fatal(err)
	}
	return e.State
}

var (
	temp    = &reply.Error{Code: 451, Enhanced: reply.EnhancedCode{4, 7, 0}, Text: "Temporary server error", Stage: reply.StageData}
	auth535 = &reply.Error{Code: 535, Enhanced: reply.EnhancedCode{5, 7, 3}, Text: "Authentication unsuccessful", Stage: reply.StageAuth}
	perm    = &reply.Error{Code: 550, Enhanced: reply.EnhancedCode{5, 7, 60}, Text: "not permitted to send as", Stage: reply.StageMail}
)

func TestJitterBounds(t *testing.T) {
	t.Parallel()
	for _, r := range []float64{0, 0.999999} {
		s := &Scheduler{o: Options{Backoff: Backoff{Min: time.Minute, Max: 30 * time.Minute, Factor: 2, Jitter: 0.2}, Rand: func() float64 { return r }}}
		d := s.backoff(1)
		if d < 48*time.Second || d > 72*time.Second {
			t.Errorf("backoff(1) with rand %v = %v", r, d)
		}
	}
}

func TestPartialRcptFailure(t *testing.T) {
	t.Parallel()
	rej := &reply.Error{Code: 550, Enhanced: reply.EnhancedCode{5, 1, 1}, Text: "no such user", Stage: reply.StageRcpt}
	f := setup(t, &fake{steps: []func(context.Context, *envelope.Envelope, []byte) (*envelope.Result, error){
		func(context.Context, *envelope.Envelope, []byte) (*envelope.Result, error) {
			return &envelope.Result{Accepted: []string{"a@example.org"}, Rejected: map[string]*reply.Error{"b@example.org": rej}, Reply: "250 OK"}, nil
		},
	}})
	out, err := f.s.attempt(context.Background(), f.envID)
	if err != nil || !out.Removed || len(out.Delivered) != 1 || out.Failed["b@example.org"] == nil {
		t.Fatalf("%+v %v", out, err)
	}
	failed, err := f.sp.ListFailed()
	if err != nil || len(failed) != 1 {
		t.Fatalf("failed/ = %+v %v", failed, err)
	}
	st := failed[0].State
	if st.Status("a@example.org") != spool.Delivered || st.Status("b@example.org") != spool.Failed {
		t.Errorf("state %+v", st)
	}
}

func TestRcpt4xxRetriedForThatRecipientOnly(t *testing.T) {
	t.Parallel()
	busy := &reply.Error{Code: 450, Enhanced: reply.EnhancedCode{4, 2, 1}, Text: "try later", Stage: reply.StageRcpt}
	f := setup(t, &fake{steps: []func(context.Context, *envelope.Envelope, []byte) (*envelope.Result, error){
		func(context.Context, *envelope.Envelope, []byte) (*envelope.Result, error) {
			return &envelope.Result{Accepted: []string{"a@example.org"}, Rejected: map[string]*reply.Error{"b@example.org": busy}}, nil
		},
		ok,
	}})
	if out, err := f.s.attempt(context.Background(), f.envID); err != nil || out.Removed || len(out.Pending) != 1 {
		t.Fatalf("%+v %v", out, err)
	}
	f.clk.Set(f.state(t).NextAttempt)
	if out, err := f.s.attempt(context.Background(), f.envID); err != nil || !out.Removed {
		t.Fatalf("%+v %v", out, err)
	}
	if got := f.fw.calls[1].to; len(got) != 1 || got[0] != "b@example.org" {
		t.Errorf("second attempt to %v, want only b", got)
	}
	if items, _, _ := f.sp.Stats(); items != 0 {
		t.Errorf("items = %d", items)
	}
}

func TestCrashMidDeliveryKeepsAttempt(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	var f *fixture
	f = setup(t, &fake{steps: []func(context.Context, *envelope.Envelope, []byte) (*envelope.Result, error){
		func(c context.Context, _ *envelope.Envelope, _ []byte) (*envelope.Result, error) {
			// "Crash" mid-attempt: the attempt is already on disk.
			if st := f.state(t); st.Attempts != 1 {
				t.Errorf("attempt not recorded before delivery: %+v", st)
			}
			cancel()
			return nil, reply.Wrap(c.Err(), 451, reply.EnhancedCode{4, 4, 2}, "connection lost")
		},
	}})
	if _, err := f.s.attempt(ctx, f.envID); err != nil {
		t.Fatal(err)
	}
	st := f.state(t)
	if st.Attempts != 1 || !st.NextAttempt.Equal(t0.Add(time.Minute)) {
		t.Fatalf("after crash: %+v", st)
	}
	// Restart: a new scheduler over the same spool attempts it no
	// earlier than NextAttempt (a first look finds it due later and puts
	// it back at that time).
	s2, err := New(withSettings(Options{Spool: f.sp, Forwarder: f.fw, Clock: f.clk.Now, Rand: func() float64 { return 0.5 }}))
	if err != nil {
		t.Fatal(err)
	}
	s2.start()
	out, err := s2.attempt(context.Background(), f.envID)
	if err != nil || f.fw.n() != 1 || !out.NextAttempt.Equal(st.NextAttempt) {
		t.Errorf("after restart: %+v %v, %d calls; want no attempt before %v", out, err, f.fw.n(), st.NextAttempt)
	}
}

func TestMaxAgeExpires(t *testing.T) {
	t.Parallel()
	f := setup(t, &fake{steps: []func(context.Context, *envelope.Envelope, []byte) (*envelope.Result, error){ok}})
	f.clk.Set(t0.Add(121 * time.Hour))
	out, err := f.s.attempt(context.Background(), f.envID)
	if err != nil || !out.Removed || f.fw.n() != 0 {
		t.Fatalf("%+v %v, %d calls", out, err, f.fw.n())
	}
	re := out.Failed["a@example.org"]
	if re == nil || re.Enhanced != (reply.EnhancedCode{4, 4, 7}) {
		t.Errorf("reply %v", re)
	}
	if failed, err := f.sp.ListFailed(); err != nil || len(failed) != 1 || failed[0].State.Final != "expired" {
		t.Errorf("failed/ = %+v %v", failed, err)
	}
}

func TestDeliverNow(t *testing.T) {
	t.Parallel()
	t.Run("delivered", func(t *testing.T) {
		t.Parallel()
		f := setup(t, &fake{steps: []func(context.Context, *envelope.Envelope, []byte) (*envelope.Result, error){ok}})
		out, err := f.s.DeliverNow(context.Background(), f.envID)
		if err != nil || !out.Removed || len(out.Delivered) != 2 || out.Reply == "" {
			t.Fatalf("%+v %v", out, err)
		}
		if got := string(f.fw.calls[0].body); got != "Subject: hi\r\n\r\nbody\r\n" {
			t.Errorf("body %q", got)
		}
	})
	t.Run("permanent", func(t *testing.T) {
		t.Parallel()
		f := setup(t, &fake{steps: []func(context.Context, *envelope.Envelope, []byte) (*envelope.Result, error){fails(perm)}})
		out, err := f.s.DeliverNow(context.Background(), f.envID)
		if err != nil || !out.Removed || len(out.Failed) != 2 || reply.As(out.Err).Code != 550 {
			t.Fatalf("%+v %v", out, err)
		}
		if items, _, _ := f.sp.Stats(); items != 0 {
			t.Errorf("still queued")
		}
		if failed, _ := f.sp.ListFailed(); len(failed) != 0 {
			t.Errorf("kept in failed/ though the client got the 5xx")
		}
	})
	t.Run("transient", func(t *testing.T) {
		t.Parallel()
		f := setup(t, &fake{steps: []func(context.Context, *envelope.Envelope, []byte) (*envelope.Result, error){fails(temp)}})
		out, err := f.s.DeliverNow(context.Background(), f.envID)
		if err != nil || out.Removed || len(out.Pending) != 2 || !out.NextAttempt.Equal(t0.Add(time.Minute)) {
			t.Fatalf("%+v %v", out, err)
		}
		if due, ok := f.s.due.when(f.envID); !ok || !due.Equal(out.NextAttempt) {
			t.Errorf("not scheduled: %v %v", due, ok)
		}
	})
}

func TestPanicContained(t *testing.T) {
	t.Parallel()
	f := setup(t, &fake{steps: []func(context.Context, *envelope.Envelope, []byte) (*envelope.Result, error){
		func(context.Context, *envelope.Envelope, []byte) (*envelope.Result, error) { panic("boom") },
	}})
	for i := 1; i <= 3; i++ {
		out, err := f.s.attempt(context.Background(), f.envID)
		if err != nil {
			t.Fatal(err)
		}
		if i < 3 {
			if out.Removed || f.state(t).Panics != i {
				t.Fatalf("panic %d: %+v", i, out)
			}
			f.clk.Set(f.state(t).NextAttempt)
			continue
		}
		if !out.Removed {
			t.Fatalf("not given up after 3 panics: %+v", out)
		}
	}
	failed, err := f.sp.ListFailed()
	if err != nil || len(failed) != 1 || failed[0].State.Final != "internal error" {
		t.Fatalf("failed/ = %+v %v", failed, err)
	}
}

func TestContinuousPermanentErrorsMarkUnhealthy(t *testing.T) {
	t.Parallel()
	f := setup(t, &fake{steps: []func(context.Context, *envelope.Envelope, []byte) (*envelope.Result, error){fails(perm)}})
	ids := []envelope.ID{f.envID}
	for i := 1; i < 5; i++ {
		env := &envelope.Envelope{ID: envelope.NewID(t0), To: []string{"c@example.org"}, Mailbox: "relay@example.com", Received: t0}
		if err := f.sp.Put(env, bytes.NewReader([]byte("x\r\n"))); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, env.ID)
	}
	for i, id := range ids {
		if h := f.s.Health()["relay@example.com"]; i > 0 && !h.Healthy {
			t.Fatalf("unhealthy after %d", i)
		}
		if out, err := f.s.attempt(context.Background(), id); err != nil || !out.Removed {
			t.Fatalf("%+v %v", out, err)
		}
	}
	if h := f.s.Health()["relay@example.com"]; h.Healthy || h.ConsecutivePermanent != 5 {
		t.Errorf("health %+v", h)
	}
}
