package delivery

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/spool"
)

// The scheduler's timer-driven behaviour — retries along the backoff,
// mailbox holds and probes, pacing, waking for new mail — tested through
// Run inside a testing/synctest bubble: the scheduler, its spool and its
// timers run on the bubble's clock, which moves only when every goroutine
// waits, so the times asserted are exact and an hour's schedule takes no
// real time. synctest.Wait is the synchronisation point: it returns when
// every goroutine of the bubble is blocked, so "nothing else happened" is
// a fact at that instant, not a guess after a sleep.
//
// The tests of the whole path against the imitation of Exchange
// (exchange_test.go) cannot run in a bubble: they do real network I/O,
// which synctest does not isolate (a goroutine blocked on a socket never
// counts as waiting, and deadlines would be set on the bubble's clock), so
// they keep their injected clock.

// bubble is a Scheduler over a fresh spool on the bubble's clock. Make it
// inside synctest.Test.
type bubble struct {
	sp    *spool.Spool
	s     *Scheduler
	fw    *fake
	start time.Time
}

func newBubble(t *testing.T, fw *fake, opts func(*Options)) *bubble {
	t.Helper()
	sp, err := spool.Open(spool.Options{Dir: t.TempDir(), Fsync: true})
	if err != nil {
		t.Fatal(err)
	}
	o := withSettings(Options{Spool: sp, Forwarder: fw, Rand: func() float64 { return 0.5 }}) // 0.5: no jitter
	if opts != nil {
		opts(&o)
	}
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	b := &bubble{sp: sp, s: s, fw: fw, start: time.Now()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		if err := sp.Close(); err != nil {
			t.Error(err)
		}
	})
	return b
}

// put queues a message for mailbox as the listener does (Put, then
// Enqueued) and returns its ID.
func (b *bubble) put(t *testing.T, mailbox string, to ...string) envelope.ID {
	t.Helper()
	env := &envelope.Envelope{ID: envelope.NewID(time.Now()), From: "app@example.com", To: to, Mailbox: mailbox, Received: time.Now()}
	if err := b.sp.Put(env, bytes.NewReader([]byte("Subject: hi\r\n\r\nbody\r\n"))); err != nil {
		t.Fatal(err)
	}
	b.s.Enqueued(env.ID)
	return env.ID
}

// callTimes are the forwarder's calls so far, as offsets from the start.
func (b *bubble) callTimes() []time.Duration {
	b.fw.mu.Lock()
	defer b.fw.mu.Unlock()
	var out []time.Duration
	for _, c := range b.fw.calls {
		out = append(out, c.at.Sub(b.start))
	}
	return out
}

func (b *bubble) queued(t *testing.T) int {
	t.Helper()
	q, err := b.sp.List()
	if err != nil {
		t.Fatal(err)
	}
	return len(q)
}

func equalDurations(a, b []time.Duration) bool {
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

// A transient failure is retried by Run's own timer exactly along the
// backoff: 1, 2, 4, 8, 16 minutes, then the 30-minute cap. Each attempt is
// on disk (count and next time) before the forwarder is called.
func TestRunRetriesAlongTheBackoff(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		var b *bubble
		var onDisk []spool.State
		record := func(_ context.Context, env *envelope.Envelope, _ []byte) {
			e, err := b.sp.Get(env.ID)
			if err != nil {
				t.Error(err)
				return
			}
			onDisk = append(onDisk, e.State)
		}
		b = newBubble(t, &fake{steps: []step{func(ctx context.Context, env *envelope.Envelope, body []byte) (*envelope.Result, error) {
			record(ctx, env, body)
			if len(onDisk) < 8 {
				return nil, temp
			}
			return ok(ctx, env, body)
		}}}, nil)
		b.put(t, "relay@example.com", "a@example.org", "b@example.org")
		time.Sleep(2 * time.Hour)
		synctest.Wait()

		delays := []time.Duration{1, 2, 4, 8, 16, 30, 30} // minutes, after attempts 1…7
		want := []time.Duration{0}
		for _, d := range delays {
			want = append(want, want[len(want)-1]+d*time.Minute)
		}
		if got := b.callTimes(); !equalDurations(got, want) {
			t.Fatalf("attempts at %v, want %v", got, want)
		}
		for i, st := range onDisk {
			if st.Attempts != i+1 {
				t.Errorf("attempt %d: %d attempts on disk before the call", i+1, st.Attempts)
			}
			if i < len(delays) {
				if next := b.start.Add(want[i] + delays[i]*time.Minute); !st.NextAttempt.Equal(next) {
					t.Errorf("attempt %d: next attempt on disk +%v, want +%v", i+1, st.NextAttempt.Sub(b.start), next.Sub(b.start))
				}
			}
		}
		if n := b.queued(t); n != 0 {
			t.Errorf("%d messages queued after the successful attempt", n)
		}
	})
}

// An AUTH failure is the path's, not the messages': the mailbox is held,
// no attempt is counted, and while it is held nothing is sent; then one
// message probes at the end of each hold, which doubles (1 min, then
// 2 min) while the probes fail, and the first success lets everything go.
func TestRunHoldsMailboxOnAuthFailureAndProbes(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := newBubble(t, &fake{steps: []step{fails(auth535), fails(auth535), ok}}, func(o *Options) { o.Workers = 1 })
		first := b.put(t, "relay@example.com", "a@example.org")
		b.put(t, "relay@example.com", "b@example.org")
		synctest.Wait()
		// The first attempt failed and holds the mailbox; the second
		// message, due at the same instant, was not sent.
		if got := b.callTimes(); !equalDurations(got, []time.Duration{0}) {
			t.Fatalf("attempts at %v, want one at 0", got)
		}
		h := b.s.Health()["relay@example.com"]
		if h.Healthy || h.Cause != "auth" || !h.HeldUntil.Equal(b.start.Add(time.Minute)) {
			t.Fatalf("health %+v, want held for auth until +1m", h)
		}
		if e, err := b.sp.Get(first); err != nil || e.State.Attempts != 0 {
			t.Errorf("the path's failure counted against the message: %+v %v", e.State, err)
		}

		time.Sleep(time.Hour)
		synctest.Wait()
		// Probes at +1m (fails: held 2 min more) and +3m (succeeds),
		// then the other message at once.
		if got, want := b.callTimes(), []time.Duration{0, time.Minute, 3 * time.Minute, 3 * time.Minute}; !equalDurations(got, want) {
			t.Errorf("attempts at %v, want %v", got, want)
		}
		if h := b.s.Health()["relay@example.com"]; !h.Healthy {
			t.Errorf("not healthy after the successful probe: %+v", h)
		}
		if n := b.queued(t); n != 0 {
			t.Errorf("%d messages queued", n)
		}
	})
}

// Pacing at one message a minute (a burst of one): three messages go at
// 0, +1 min and +2 min, by Run's timer; waiting for a slot is not an
// attempt.
func TestRunPaces(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		var b *bubble
		var attempts []int
		b = newBubble(t, &fake{steps: []step{func(ctx context.Context, env *envelope.Envelope, body []byte) (*envelope.Result, error) {
			e, err := b.sp.Get(env.ID)
			if err != nil {
				t.Error(err)
			} else {
				attempts = append(attempts, e.State.Attempts)
			}
			return ok(ctx, env, body)
		}}}, func(o *Options) { o.Limits = func(string) Limits { return Limits{Rate: 1} } })
		for range 3 {
			b.put(t, "relay@example.com", "c@example.org")
		}
		time.Sleep(10 * time.Minute)
		synctest.Wait()
		if got, want := b.callTimes(), []time.Duration{0, time.Minute, 2 * time.Minute}; !equalDurations(got, want) {
			t.Errorf("sent at %v, want %v", got, want)
		}
		for i, n := range attempts {
			if n != 1 {
				t.Errorf("message %d sent as attempt %d: waiting for its slot was counted", i+1, n)
			}
		}
	})
}

// A message just queued is attempted at once: Enqueued wakes a worker,
// not the periodic rescan (30 s) or any timer.
func TestRunDeliversEnqueued(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := newBubble(t, &fake{steps: []step{ok}}, func(o *Options) { o.Rand = func() float64 { return 0 } })
		time.Sleep(10 * time.Second) // Run is idle, waiting
		b.put(t, "relay@example.com", "a@example.org")
		synctest.Wait()
		if got := b.callTimes(); !equalDurations(got, []time.Duration{10 * time.Second}) {
			t.Fatalf("attempts at %v, want one at the moment it was queued (+10s)", got)
		}
		if n := b.queued(t); n != 0 {
			t.Errorf("%d messages queued after delivery", n)
		}
	})
}

// Workers do not queue up behind a mailbox whose connections are all busy:
// with one connection for A and A's delivery stuck, B's mail still goes, A
// never has two attempts at once, and A's second message follows as soon as
// the first is done — all at the same instant, without a timer.
func TestBusyMailboxDoesNotStarveOthers(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		var mu sync.Mutex
		inA, maxA := 0, 0
		var order []string
		fw := &fake{steps: []step{func(ctx context.Context, env *envelope.Envelope, body []byte) (*envelope.Result, error) {
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
			return ok(ctx, env, body)
		}}}
		b := newBubble(t, fw, func(o *Options) {
			o.Workers = 2
			o.Limits = func(string) Limits { return Limits{Connections: 1} }
		})
		b.put(t, "a@example.com", "x@example.org")
		b.put(t, "a@example.com", "x@example.org")
		b.put(t, "b@example.com", "x@example.org")
		synctest.Wait()
		mu.Lock()
		if len(order) != 1 || order[0] != "b@example.com" || inA != 1 {
			t.Fatalf("while a's first message is stuck: delivered %v, %d of a's in flight; want b delivered, one of a's", order, inA)
		}
		mu.Unlock()
		close(release)
		synctest.Wait()
		if n := b.queued(t); n != 0 {
			t.Errorf("%d messages queued after a's connection freed", n)
		}
		if maxA != 1 {
			t.Errorf("%d concurrent attempts for a mailbox with one connection", maxA)
		}
		if d := time.Since(b.start); d != 0 {
			t.Errorf("a's second message waited %v for a timer; it follows the first at once", d)
		}
	})
}

// A mailbox allowed three connections has two attempts in flight when
// Exchange refuses the third with 432 4.3.2 (someone else holds a slot).
// The scheduler — the one owner of the limit — lowers it to two, does not
// count the attempt, and sends the message again on one of ours as soon as
// one frees, without waiting for a retry time (no time passes); no worker
// blocks meanwhile (another mailbox's mail goes through).
func TestConcurrency432LowersLimitAndWaitsForOurs(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		var mu sync.Mutex
		refused, stuck := false, 0
		var refusedID envelope.ID
		var order []envelope.ID
		fw := &fake{steps: []step{func(ctx context.Context, env *envelope.Envelope, body []byte) (*envelope.Result, error) {
			mu.Lock()
			switch {
			case env.Mailbox == "a@example.com" && stuck < 2:
				stuck++
				mu.Unlock()
				<-release
				mu.Lock()
			case env.Mailbox == "a@example.com" && !refused:
				refused, refusedID = true, env.ID
				mu.Unlock()
				return nil, conc432
			}
			order = append(order, env.ID)
			mu.Unlock()
			return ok(ctx, env, body)
		}}}
		b := newBubble(t, fw, func(o *Options) {
			o.Workers = 3
			o.Limits = func(string) Limits { return Limits{Connections: 3} }
		})
		for range 3 {
			b.put(t, "a@example.com", "x@example.org") // one of the three is refused with 432
		}
		synctest.Wait()
		mu.Lock()
		if !refused || stuck != 2 {
			t.Fatalf("refused %v, %d stuck; want the third of a's refused while two are in flight", refused, stuck)
		}
		id := refusedID
		mu.Unlock()
		if n := b.s.ConnectionLimit("a@example.com"); n != 2 {
			t.Fatalf("limit %d after the 432, want the two connections we hold", n)
		}
		if e, err := b.sp.Get(id); err != nil || e.State.Attempts != 0 || e.State.LastError == "" {
			t.Errorf("the refused attempt on disk: %+v %v; want it uncounted, with its error", e.State, err)
		}
		other := b.put(t, "b@example.com", "x@example.org")
		synctest.Wait()
		mu.Lock()
		if len(order) != 1 || order[0] != other {
			t.Errorf("delivered %v while a's two attempts are stuck, want b's %s", order, other)
		}
		mu.Unlock()
		close(release)
		synctest.Wait()
		if n := b.queued(t); n != 0 {
			t.Errorf("%d messages queued once a's connections freed", n)
		}
		if fw.n() != 5 {
			t.Errorf("%d forwarder calls, want 5 (one refused)", fw.n())
		}
		if d := time.Since(b.start); d != 0 {
			t.Errorf("the refused message waited %v for a timer; it goes on one of ours as soon as one frees", d)
		}
	})
}

// The 5xx permanent error five times in a row: the mailbox is unhealthy
// and paused (held 1 min), then probed by one message at the end of the
// hold; the success recovers it and the rest follows.
func TestRunPausesOnContinuousErrors(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := newBubble(t, &fake{steps: []step{fails(perm), fails(perm), fails(perm), fails(perm), fails(perm), ok}},
			func(o *Options) { o.Workers = 1 })
		for range 7 {
			b.put(t, "relay@example.com", "c@example.org")
		}
		synctest.Wait()
		if got := b.callTimes(); !equalDurations(got, []time.Duration{0, 0, 0, 0, 0}) {
			t.Fatalf("attempts at %v, want five at 0 then a pause", got)
		}
		h := b.s.Health()["relay@example.com"]
		if h.Healthy || h.Cause != "continuous_errors" || !h.HeldUntil.Equal(b.start.Add(time.Minute)) {
			t.Fatalf("health %+v, want paused for continuous errors until +1m", h)
		}
		time.Sleep(time.Hour)
		synctest.Wait()
		if got, want := b.callTimes(), []time.Duration{0, 0, 0, 0, 0, time.Minute, time.Minute}; !equalDurations(got, want) {
			t.Errorf("attempts at %v, want %v", got, want)
		}
		if h := b.s.Health()["relay@example.com"]; !h.Healthy {
			t.Errorf("not recovered: %+v", h)
		}
		failed, err := b.sp.ListFailed()
		if err != nil || len(failed) != 5 {
			t.Errorf("failed/ holds %d (%v), want the five refused", len(failed), err)
		}
	})
}
