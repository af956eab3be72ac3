package delivery

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/reply"
	"github.com/o365relay/o365relay/relay/rewrite"
)

// The rate bucket lets a burst of Rate through, then one message per 60/Rate
// s, each waiting message with its own slot; no real time passes.
func TestPacerRate(t *testing.T) {
	t.Parallel()
	p := newPacer()
	l := Limits{Rate: 3}
	now := t0
	var slots []time.Time
	for i := range 10 {
		id := envelope.ID(strings.Repeat("A", 22) + string(rune('0'+i)))
		at, ok := p.admit(id, 1, l, now)
		if i < 3 {
			if !ok {
				t.Fatalf("message %d of the burst waits until %v", i, at)
			}
			continue
		}
		if ok {
			t.Fatalf("message %d not paced", i)
		}
		slots = append(slots, at)
	}
	for i, at := range slots {
		if want := t0.Add(time.Duration(i+1) * 20 * time.Second); !at.Equal(want) {
			t.Errorf("slot %d at +%v, want +%v", i, at.Sub(t0), want.Sub(t0))
		}
	}
	// A booked message coming back early keeps waiting for its slot; at
	// its slot it goes without taking another.
	id := envelope.ID(strings.Repeat("A", 22) + "3")
	if at, ok := p.admit(id, 1, l, t0.Add(10*time.Second)); ok || !at.Equal(slots[0]) {
		t.Errorf("early return: %v %v", at, ok)
	}
	if _, ok := p.admit(id, 1, l, slots[0]); !ok {
		t.Error("not admitted at its slot")
	}
	// Over a long run the rate holds: 300 messages at 30/min take ~9 min
	// (a minute's burst, then 270 spaced 2 s apart), however eagerly they
	// are offered.
	l = Limits{Rate: 30}
	q := newPacer()
	now = t0
	for i := range 300 {
		id := envelope.ID(rune(i))
		at, ok := q.admit(id, 1, l, now)
		if !ok {
			now = at
			if _, ok := q.admit(id, 1, l, now); !ok {
				t.Fatalf("message %d refused at its slot", i)
			}
		}
	}
	if d := now.Sub(t0); d != 9*time.Minute {
		t.Errorf("300 messages in %v at 30/min", d)
	}
}

func TestPacerDailyRecipients(t *testing.T) {
	t.Parallel()
	p := newPacer()
	l := Limits{DailyRecipients: 10}
	if _, ok := p.admit("a", 6, l, t0); !ok {
		t.Fatal("first refused")
	}
	if _, ok := p.admit("b", 4, l, t0.Add(time.Hour)); !ok {
		t.Fatal("second refused")
	}
	at, ok := p.admit("c", 1, l, t0.Add(2*time.Hour))
	if ok || !at.Equal(t0.Add(24*time.Hour)) {
		t.Fatalf("over budget: %v %v", at, ok)
	}
	// Recipients that were not accepted give their budget back.
	p.settle(t0.Add(time.Hour), 4, 0)
	if _, ok := p.admit("c", 4, l, t0.Add(2*time.Hour)); !ok {
		t.Error("budget not returned")
	}
	if _, ok := p.admit("d", 1, l, t0.Add(24*time.Hour)); !ok {
		t.Error("window did not roll")
	}
	// A message larger than the whole budget goes when nothing is counted.
	if _, ok := newPacer().admit("e", 50, l, t0); !ok {
		t.Error("oversized message can never go")
	}
	if at, ok := p.quotaFreesAt(t0.Add(25 * time.Hour)); !ok || !at.Equal(t0.Add(26*time.Hour)) {
		t.Errorf("quota frees at %v %v", at, ok)
	}
}

// Through the scheduler: paced messages are not attempts (nothing recorded,
// the forwarder not called) and come back at their slot.
func TestSchedulerPaces(t *testing.T) {
	t.Parallel()
	fw := &fake{steps: []step{ok}}
	f := setup(t, fw)
	f.s.o.Limits = func(string) Limits { return Limits{Rate: 1} } // burst 1, one per minute
	ids := []envelope.ID{f.envID}
	for range 2 {
		env := &envelope.Envelope{ID: envelope.NewID(t0), From: "app@example.com", To: []string{"c@example.org"}, Mailbox: "relay@example.com", Received: t0}
		if err := f.sp.Put(env, bytes.NewReader([]byte("x\r\n"))); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, env.ID)
	}
	out, err := f.s.attempt(context.Background(), ids[0])
	if err != nil || !out.Removed {
		t.Fatalf("%+v %v", out, err)
	}
	out, err = f.s.attempt(context.Background(), ids[1])
	if err != nil || out.Removed || !out.NextAttempt.Equal(t0.Add(time.Minute)) {
		t.Fatalf("second not paced to +1m: %+v %v", out, err)
	}
	out, err = f.s.attempt(context.Background(), ids[2])
	if err != nil || !out.NextAttempt.Equal(t0.Add(2*time.Minute)) {
		t.Fatalf("third not given the next slot: %+v %v", out, err)
	}
	if e, _ := f.sp.Get(ids[1]); e.State.Attempts != 0 || fw.n() != 1 {
		t.Errorf("paced message counted: attempts %d, calls %d", e.State.Attempts, fw.n())
	}
	f.clk.Set(t0.Add(time.Minute))
	if out, err := f.s.attempt(context.Background(), ids[1]); err != nil || !out.Removed {
		t.Fatalf("at its slot: %+v %v", out, err)
	}
}

// 554 5.2.0: the mailbox is paused until what it sent leaves the window,
// at most an hour at a time, and the message is kept.
func TestQuotaPausesUntilWindowFrees(t *testing.T) {
	t.Parallel()
	quota := &reply.Error{Code: 554, Enhanced: reply.EnhancedCode{5, 2, 0}, Text: "STOREDRV.Submission.Exception:SubmissionQuotaExceededException", Stage: reply.StageData}
	fw := &fake{steps: []step{ok, fails(quota)}}
	f := setup(t, fw)
	f.s.o.Limits = func(string) Limits { return Limits{DailyRecipients: 10000} }
	if out, err := f.s.attempt(context.Background(), f.envID); err != nil || !out.Removed {
		t.Fatalf("%+v %v", out, err)
	}
	env := &envelope.Envelope{ID: envelope.NewID(t0), From: "app@example.com", To: []string{"c@example.org"}, Mailbox: "relay@example.com", Received: t0}
	if err := f.sp.Put(env, bytes.NewReader([]byte("x\r\n"))); err != nil {
		t.Fatal(err)
	}
	f.clk.Set(t0.Add(23*time.Hour + 30*time.Minute))
	out, err := f.s.attempt(context.Background(), env.ID)
	if err != nil || out.Removed || len(out.Pending) != 1 {
		t.Fatalf("%+v %v", out, err)
	}
	if want := t0.Add(24 * time.Hour); !out.NextAttempt.Equal(want) {
		t.Errorf("paused until +%v, want +24h (the first message leaves the window)", out.NextAttempt.Sub(t0))
	}
	if h := f.s.Health()["relay@example.com"]; h.Healthy || h.Reason != "5.2.0" {
		t.Errorf("health %+v", h)
	}
}

// 501 5.5.127 reaching the scheduler (upstream's reconnect failed too):
// nothing fails, the attempt is not counted, it is retried soon.
func TestTokenExpiredNotAFailure(t *testing.T) {
	t.Parallel()
	f := setup(t, &fake{steps: []step{fails(&reply.Error{Code: 501, Enhanced: reply.EnhancedCode{5, 5, 127}, Text: "token expired", Stage: reply.StageMail})}})
	out, err := f.s.attempt(context.Background(), f.envID)
	if err != nil || out.Removed || len(out.Failed) != 0 || len(out.Pending) != 2 {
		t.Fatalf("%+v %v", out, err)
	}
	if st := f.state(t); st.Attempts != 0 || !st.NextAttempt.Equal(t0.Add(15*time.Second)) {
		t.Errorf("attempts %d next +%v", st.Attempts, st.NextAttempt.Sub(t0))
	}
}

// The same permanent error five times: unhealthy and paused, one probe at a
// time; a success recovers.
func TestContinuousErrorsPauseMailbox(t *testing.T) {
	t.Parallel()
	fw := &fake{steps: []step{fails(perm), fails(perm), fails(perm), fails(perm), fails(perm), ok}}
	f := setup(t, fw)
	var ids []envelope.ID
	for range 6 {
		env := &envelope.Envelope{ID: envelope.NewID(t0), To: []string{"c@example.org"}, Mailbox: "relay@example.com", Received: t0}
		if err := f.sp.Put(env, bytes.NewReader([]byte("x\r\n"))); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, env.ID)
	}
	for _, id := range ids[:5] {
		if _, err := f.s.attempt(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
	h := f.s.Health()["relay@example.com"]
	if h.Healthy || !h.HeldUntil.Equal(t0.Add(time.Minute)) {
		t.Fatalf("not paused: %+v", h)
	}
	out, err := f.s.attempt(context.Background(), ids[5])
	if err != nil || out.Removed || fw.n() != 5 {
		t.Fatalf("attempted while paused: %+v %v (%d calls)", out, err, fw.n())
	}
	f.clk.Set(t0.Add(time.Minute))
	if out, err := f.s.attempt(context.Background(), ids[5]); err != nil || !out.Removed {
		t.Fatalf("probe: %+v %v", out, err)
	}
	if h := f.s.Health()["relay@example.com"]; !h.Healthy {
		t.Errorf("not recovered: %+v", h)
	}
}

// Rewrite applies to what is sent, never to the spool.
func TestRewriteAtDelivery(t *testing.T) {
	t.Parallel()
	fw := &fake{steps: []step{ok}}
	f := setup(t, fw)
	var sentFrom string
	fw.steps = []step{func(ctx context.Context, env *envelope.Envelope, b []byte) (*envelope.Result, error) {
		sentFrom = env.From
		return ok(ctx, env, b)
	}}
	f.s.o.Rewrite = func(*envelope.Envelope) rewrite.Mode { return rewrite.EnvelopeFrom }
	before, err := f.sp.Body(f.envID)
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	if _, err := f.s.attempt(context.Background(), f.envID); err != nil {
		t.Fatal(err)
	}
	if sentFrom != "relay@example.com" {
		t.Errorf("MAIL FROM %q", sentFrom)
	}
	if got := string(fw.calls[0].body); got != "Subject: hi\r\n\r\nbody\r\n" {
		t.Errorf("body without From: changed: %q", got)
	}
}

// A panic outside the forwarder (here: in the pacing limits) does not kill
// the worker; three of them set the message aside with a reason.
func TestPanicOutsideForwarderSetAside(t *testing.T) {
	t.Parallel()
	f := setup(t, &fake{steps: []step{ok}})
	f.s.o.Limits = func(string) Limits { panic("limits bug") }
	for i := 1; i <= 3; i++ {
		out, err := f.s.guarded(context.Background(), f.envID, false)
		if i < 3 {
			if err != errAttemptPanicked {
				t.Fatalf("panic %d: %+v %v", i, out, err)
			}
			continue
		}
		if err != nil || out == nil || !out.Removed {
			t.Fatalf("not set aside after 3 panics: %+v %v", out, err)
		}
	}
	if _, err := f.sp.Get(f.envID); err == nil {
		t.Error("message still queued")
	}
}

// Workers do not queue up behind a mailbox whose connections are all busy:
// with one connection for A and A's delivery stuck, B's mail still goes, A
// never has two attempts at once, and A's second message follows as soon as
// the first is done.
func TestBusyMailboxDoesNotStarveOthers(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var mu sync.Mutex
	inA, maxA := 0, 0
	var order []string
	fw := &fake{steps: []step{func(ctx context.Context, env *envelope.Envelope, b []byte) (*envelope.Result, error) {
		if env.Mailbox == "a@example.com" {
			mu.Lock()
			inA++
			maxA = max(maxA, inA)
			mu.Unlock()
			<-release
			mu.Lock()
			inA--
			mu.Unlock()
		}
		mu.Lock()
		order = append(order, env.Mailbox)
		mu.Unlock()
		return ok(ctx, env, b)
	}}}
	f := setup(t, fw)
	f.s.o.Workers = 2
	f.s.o.Limits = func(string) Limits { return Limits{Connections: 1} }
	if err := f.sp.Remove(f.envID); err != nil {
		t.Fatal(err)
	}
	put := func(mb string, at time.Time) {
		env := &envelope.Envelope{ID: envelope.NewID(at), From: mb, To: []string{"x@example.org"}, Mailbox: mb, Received: at}
		if err := f.sp.Put(env, bytes.NewReader([]byte("x\r\n"))); err != nil {
			t.Fatal(err)
		}
		f.s.mu.Lock()
		f.s.scheduleLocked(env.ID, at)
		f.s.mu.Unlock()
	}
	put("a@example.com", t0.Add(-3*time.Second))
	put("a@example.com", t0.Add(-2*time.Second))
	put("b@example.com", t0.Add(-time.Second))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- f.s.Run(ctx) }()
	say := func() string { mu.Lock(); defer mu.Unlock(); return fmt.Sprint("order ", order) }
	waitFor(t, "b delivered while a is stuck", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(order) == 1 && order[0] == "b@example.com"
	}, say)
	close(release)
	waitFor(t, "both a delivered", func() bool {
		q, err := f.sp.List()
		return err == nil && len(q) == 0
	}, say)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if maxA != 1 {
		t.Errorf("%d concurrent attempts for a mailbox with one connection", maxA)
	}
}
