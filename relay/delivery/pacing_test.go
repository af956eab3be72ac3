package delivery

import (
	"bytes"
	"context"
	"strings"
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
