package delivery

import (
	"context"
	"testing"
	"time"

	"github.com/o365relay/o365relay/relay/envelope"
)

// An operator's retry (Retried) ends the mailbox's hold at once, so the
// very next attempt is the probe; without it the attempt waits out the
// hold. Deleted forgets a message that is not being attempted.
func TestRetriedLiftsHoldAndDeletedForgets(t *testing.T) {
	t.Parallel()
	f := setup(t, &fake{steps: []func(context.Context, *envelope.Envelope, []byte) (*envelope.Result, error){fails(auth535), ok}})
	if _, err := f.s.attempt(context.Background(), f.envID); err != nil {
		t.Fatal(err)
	}
	if h := f.s.Health()["relay@example.com"]; h.Healthy || !h.HeldUntil.Equal(t0.Add(time.Minute)) {
		t.Fatalf("not held: %+v", h)
	}
	f.clk.Set(t0.Add(10 * time.Second))
	if err := f.sp.Retry(f.envID); err != nil {
		t.Fatal(err)
	}
	f.s.Retried(f.envID, "relay@example.com")
	f.s.mu.Lock()
	due, scheduled := f.s.due.when(f.envID)
	f.s.mu.Unlock()
	if !scheduled || !due.Equal(t0.Add(10*time.Second)) {
		t.Errorf("after Retried: due %v (%v), want now", due, scheduled)
	}
	out, err := f.s.attempt(context.Background(), f.envID)
	if err != nil || !out.Removed || f.fw.n() != 2 {
		t.Fatalf("retried during the hold: %+v %v, %d calls; want the probe delivered", out, err, f.fw.n())
	}
	if h := f.s.Health()["relay@example.com"]; !h.Healthy {
		t.Errorf("not healthy after the probe: %+v", h)
	}

	f.s.Retried("0000000000000000000000X", "relay@example.com")
	f.s.Deleted("0000000000000000000000X")
	f.s.mu.Lock()
	_, still := f.s.due.when("0000000000000000000000X")
	f.s.mu.Unlock()
	if still {
		t.Error("Deleted left the message scheduled")
	}
}
