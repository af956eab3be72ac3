package relay

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/o365relay/o365relay/relay/control"
	"github.com/o365relay/o365relay/relay/exchangetest"
	"github.com/o365relay/o365relay/relay/relaytest"
)

// A full sending mailbox (554 5.2.2 after the data) is not the message's
// fault: with ack=upstream the application still gets its 250, the mailbox
// is held with reason mailbox_full in the status, nothing goes to failed/,
// and once the operator has made room and retried, the message arrives.
func TestSendingMailboxFullHoldsNotFails(t *testing.T) {
	t.Parallel()
	// A long retry_min: the hold lasts until the operator's retry.
	p := startPipeline(t, pipelineOptions{settings: map[string]string{"ack": "upstream", "retry_min": "1h", "retry_max": "2h"}})
	p.cloud.Exchange.Inject(exchangetest.Fault{Stage: exchangetest.StageData,
		Reply: &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 2, 2}, Message: "mailbox full; STOREDRV.Submission.Exception:QuotaExceededException"}})
	p.sendPlain(t, "mailbox full")
	if left := p.cloud.Exchange.PendingFaults(); left != 0 {
		t.Fatalf("the 554 5.2.2 was never sent (%d pending)", left)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	held := false
	for _, m := range p.r.Status(ctx).Mailboxes {
		if strings.EqualFold(m.Name, relaytest.Mailbox) && m.Held && strings.Contains(m.Reason, "mailbox_full") {
			held = true
		}
	}
	if !held {
		t.Errorf("status does not show the mailbox held for mailbox_full: %+v", p.r.Status(ctx).Mailboxes)
	}
	if failed, err := p.r.Spool().ListFailed(); err != nil || len(failed) != 0 {
		t.Fatalf("failed/ holds %d messages (%v)", len(failed), err)
	}
	queued, err := p.r.Spool().List()
	if err != nil || len(queued) != 1 {
		t.Fatalf("queue holds %d messages (%v), want 1", len(queued), err)
	}
	// The operator empties Sent Items and retries through the daemon's
	// control socket, as `o365relay queue retry` does.
	c, err := control.Dial(ctx, control.SocketPath(p.r.cfg.SpoolDir))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	}()
	if err := c.Retry(ctx, queued[0].Envelope.ID); err != nil {
		t.Fatal(err)
	}
	if err := p.cloud.Exchange.WaitMessages(ctx, 1); err != nil {
		t.Fatal(err)
	}
}
