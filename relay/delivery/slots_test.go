package delivery

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/reply"
)

var conc432 = &reply.Error{Code: 432, Enhanced: reply.EnhancedCode{4, 3, 2}, Text: "Concurrent connections limit exceeded", Stage: reply.StageAuth}

// TestConcurrency432LowersLimitAndWaitsForOurs: a mailbox allowed three
// connections has two attempts in flight when Exchange refuses the third
// with 432 4.3.2 (someone else holds a slot). The scheduler — the one owner
// of the limit — lowers it to two, does not count the attempt, and sends
// the message again on one of ours as soon as one frees, without waiting
// for a retry time (the clock never moves here); no worker blocks
// meanwhile (another mailbox's mail goes through).
func TestConcurrency432LowersLimitAndWaitsForOurs(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var mu sync.Mutex
	refused, stuck := false, 0
	var refusedID envelope.ID
	var order []string
	fw := &fake{steps: []step{func(ctx context.Context, env *envelope.Envelope, b []byte) (*envelope.Result, error) {
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
		order = append(order, string(env.ID))
		mu.Unlock()
		return ok(ctx, env, b)
	}}}
	f := setup(t, fw)
	f.s.o.Workers = 3
	f.s.o.Limits = func(string) Limits { return Limits{Connections: 3} }
	if err := f.sp.Remove(f.envID); err != nil {
		t.Fatal(err)
	}
	var ids []envelope.ID
	put := func(mb string, at time.Time) {
		env := &envelope.Envelope{ID: envelope.NewID(at), From: mb, To: []string{"x@example.org"}, Mailbox: mb, Received: at}
		if err := f.sp.Put(env, bytes.NewReader([]byte("x\r\n"))); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, env.ID)
		f.s.Enqueued(env.ID)
	}
	put("a@example.com", t0.Add(-4*time.Second))
	put("a@example.com", t0.Add(-3*time.Second))
	put("a@example.com", t0.Add(-2*time.Second)) // one of the three is refused with 432
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- f.s.Run(ctx) }()
	say := func() string { mu.Lock(); defer mu.Unlock(); return fmt.Sprint("delivered ", order) }
	waitFor(t, "the 432", func() bool { mu.Lock(); defer mu.Unlock(); return refused }, say)
	waitFor(t, "the limit lowered to the two connections we hold", func() bool { return f.s.ConnectionLimit("a@example.com") == 2 }, say)
	put("b@example.com", t0.Add(-time.Second))
	waitFor(t, "b delivered while a's two attempts are stuck", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(order) == 1 && order[0] == string(ids[3])
	}, say)
	waitFor(t, "the refused attempt uncounted on disk", func() bool {
		mu.Lock()
		id := refusedID
		mu.Unlock()
		e, err := f.sp.Get(id)
		return err == nil && e.State.Attempts == 0 && e.State.LastError != ""
	}, say)
	close(release)
	waitFor(t, "all delivered on our own connections", func() bool {
		q, err := f.sp.List()
		return err == nil && len(q) == 0
	}, say)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if fw.n() != 5 {
		t.Errorf("%d forwarder calls, want 5 (one refused)", fw.n())
	}
}

// TestConnectionLimitRestores: a lowered limit grows back by one per
// RestoreAfter, up to the configured one; a 432 with nothing of ours in
// flight drops it to one and is the message's to report.
func TestConnectionLimitRestores(t *testing.T) {
	t.Parallel()
	f := setup(t, &fake{steps: []step{fails(conc432), ok}})
	f.s.o.Limits = func(string) Limits { return Limits{Connections: 3} }
	out, err := f.s.attempt(context.Background(), f.envID)
	if err != nil || out.slotRetry || len(out.Pending) != 2 {
		t.Fatalf("alone: %+v %v", out, err)
	}
	if n := f.s.ConnectionLimit("relay@example.com"); n != 1 {
		t.Fatalf("limit %d after a 432 with nothing of ours, want 1", n)
	}
	for _, want := range []int{2, 3, 3} {
		f.clk.Set(f.clk.Now().Add(time.Minute))
		if !f.s.enter("x", "relay@example.com", 3) {
			t.Fatal("enter refused")
		}
		f.s.leave("relay@example.com")
		if n := f.s.ConnectionLimit("relay@example.com"); n != want {
			t.Errorf("limit %d, want %d", n, want)
		}
	}
}
