package delivery

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/reply"
)

// mailboxFull is Exchange's reply after the data when the sending
// mailbox is over its quota (docs/exchange.md#554-522-sending-mailbox-full).
var mailboxFull = &reply.Error{Code: 554, Enhanced: reply.EnhancedCode{5, 2, 2},
	Text: "mailbox full; STOREDRV.Submission.Exception:QuotaExceededException", Stage: reply.StageData}

// A full sending mailbox is the mailbox's state, not the message's fault:
// the first 554 5.2.2 holds the mailbox (reason mailbox_full) along the
// retry schedule, nothing fails and the attempt is not counted; the next
// success clears the hold.
func TestSendingMailboxFullHoldsTheMailbox(t *testing.T) {
	t.Parallel()
	f := setup(t, &fake{steps: []step{fails(mailboxFull), fails(mailboxFull), ok}})
	// A mailbox of its own: the metrics are the process's.
	const mb = "full@example.com"
	env := &envelope.Envelope{ID: envelope.NewID(t0), From: "app@example.com", To: []string{"a@example.org", "b@example.org"}, Mailbox: mb, Received: t0}
	if err := f.sp.Put(env, strings.NewReader("Subject: hi\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	f.envID = env.ID
	out, err := f.s.attempt(context.Background(), f.envID)
	if err != nil || out.Removed || len(out.Failed) != 0 || len(out.Pending) != 2 {
		t.Fatalf("first 554 5.2.2: %+v %v; want both recipients kept", out, err)
	}
	if st := f.state(t); st.Attempts != 0 || !st.NextAttempt.Equal(t0.Add(time.Minute)) {
		t.Errorf("attempts %d, next +%v; want 0, +1m", st.Attempts, st.NextAttempt.Sub(t0))
	}
	h := f.s.Health()[mb]
	if h.Healthy || h.Cause != "mailbox_full" || h.Reason != "5.2.2" || !h.HeldUntil.Equal(t0.Add(time.Minute)) {
		t.Errorf("health %+v; want held until +1m, cause mailbox_full", h)
	}
	if v := testutil.ToFloat64(mailboxHeld.WithLabelValues(mb, "mailbox_full")); v != 1 {
		t.Errorf("o365relay_delivery_mailbox_held{reason=\"mailbox_full\"} = %v", v)
	}
	// Held: no attempt before the hold ends.
	f.clk.Set(t0.Add(30 * time.Second))
	if out, err := f.s.attempt(context.Background(), f.envID); err != nil || out.Removed || f.fw.n() != 1 {
		t.Fatalf("during the hold: %+v %v, %d calls", out, err, f.fw.n())
	}
	// A probe that finds the mailbox still full doubles the hold.
	f.clk.Set(t0.Add(time.Minute))
	if out, err := f.s.attempt(context.Background(), f.envID); err != nil || out.Removed || len(out.Failed) != 0 {
		t.Fatalf("probe: %+v %v", out, err)
	}
	if h := f.s.Health()[mb]; !h.HeldUntil.Equal(t0.Add(3 * time.Minute)) {
		t.Errorf("after a failed probe held until +%v, want +3m", h.HeldUntil.Sub(t0))
	}
	f.clk.Set(t0.Add(3 * time.Minute))
	if out, err := f.s.attempt(context.Background(), f.envID); err != nil || !out.Removed || len(out.Delivered) != 2 {
		t.Fatalf("after the hold: %+v %v", out, err)
	}
	if failed, err := f.sp.ListFailed(); err != nil || len(failed) != 0 {
		t.Errorf("failed/ = %d messages (%v)", len(failed), err)
	}
	if h := f.s.Health()[mb]; !h.Healthy || h.Cause != "" {
		t.Errorf("after success: %+v", h)
	}
	if mailboxHeld.DeleteLabelValues(mb, "mailbox_full") {
		t.Error("held{reason=\"mailbox_full\"} still shown after recovery")
	}
}

// With ack=upstream the client is not told 554 5.2.2 for its message: it
// stays queued (the sink answers 250) while the mailbox is held.
func TestSendingMailboxFullDeliverNowKeepsTheMessage(t *testing.T) {
	t.Parallel()
	f := setup(t, &fake{steps: []step{fails(mailboxFull)}})
	out, err := f.s.DeliverNow(context.Background(), f.envID)
	if err != nil || out.Removed || len(out.Failed) != 0 || len(out.Pending) != 2 {
		t.Fatalf("%+v %v; want the message queued", out, err)
	}
	if items, _, _ := f.sp.Stats(); items != 1 {
		t.Errorf("%d queued, want 1", items)
	}
}
