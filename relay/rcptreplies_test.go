package relay

import (
	"context"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/o365relay/o365relay/relay/exchangetest"
)

// Exchange's "501 5.5.127" to RCPT says the session's token expired, not
// that the recipient is refused: through the whole relay (the Exchange
// client reports every recipient refused so), the application gets its
// 250 with ack=upstream, the recipient is not failed, and the retry on a
// new session delivers the message.
func TestTokenExpiredAtRcptFailsNoRecipient(t *testing.T) {
	t.Parallel()
	p := startPipeline(t, pipelineOptions{settings: map[string]string{"ack": "upstream", "retry_min": "100ms", "retry_max": "400ms"}})
	p.cloud.Exchange.Inject(exchangetest.Fault{Stage: exchangetest.StageRcpt,
		Reply: &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 127}, Message: "Authentication token expired"}})
	p.sendPlain(t, "token expired at RCPT")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := p.cloud.Exchange.WaitMessages(ctx, 1); err != nil {
		failed, _ := p.r.Spool().ListFailed()
		t.Fatalf("%v; %d in failed/", err, len(failed))
	}
	if failed, err := p.r.Spool().ListFailed(); err != nil || len(failed) != 0 {
		t.Errorf("failed/ holds %d messages (%v)", len(failed), err)
	}
}
