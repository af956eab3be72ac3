package relay

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/relay/relaytest"
	"github.com/o365relay/o365relay/relay/rewrite"
)

// A sender whose rule rewrites From: (envelope+from) and whose header
// section the rewrite cannot read gets 552 5.3.4 at intake, instead of a
// 250 and then Exchange's SendAsDenied (the message in failed/); one just
// within the limit is rewritten and delivered.
func TestRewriteLimitRefusedAtIntake(t *testing.T) {
	t.Parallel()
	p := startPipeline(t, pipelineOptions{sendAsOwn: true, settings: map[string]string{"ack": "spool"},
		file: "senders:\n  - sender: \"*@app.example\"\n    mailbox: " + relaytest.Mailbox + "\n    rewrite: envelope+from\n"})
	send := func(headerOctets int) string {
		line := "X-Pad: " + strings.Repeat("p", 991) + "\r\n"
		n := headerOctets - len("From: App <app@app.example>\r\n") - len("\r\n")
		pad := strings.Repeat(line, n/len(line)) + "X-Pad: " + strings.Repeat("p", n%len(line)-len("X-Pad: \r\n")) + "\r\n"
		sc := p.dial(t)
		defer sc.close()
		for _, c := range []string{"EHLO app.example\r\n", "MAIL FROM:<app@app.example>\r\n", "RCPT TO:<x@fabrikam.example>\r\n", "DATA\r\n"} {
			sc.mustCmd(t, c)
		}
		return sc.mustCmd(t, "From: App <app@app.example>\r\n"+pad+"\r\nbody\r\n.\r\n")
	}
	if rep := send(rewrite.MaxHeader + 1000); !strings.HasPrefix(rep, "552 5.3.4 Header section longer than 262144 octets") {
		t.Fatalf("over the limit: %q", rep)
	}
	if rep := send(rewrite.MaxHeader - 1000); !strings.HasPrefix(rep, "250 ") {
		t.Fatalf("within the limit: %q", rep)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.cloud.Exchange.WaitMessages(ctx, 1); err != nil {
		failed, _ := p.r.Spool().ListFailed()
		t.Fatalf("%v (%d in failed/)", err, len(failed))
	}
	if got := p.cloud.Exchange.Messages()[0].Data; !strings.Contains(string(got), "\r\nFrom: App <"+relaytest.Mailbox+">\r\n") {
		t.Errorf("From: not rewritten")
	}
	if failed, err := p.r.Spool().ListFailed(); err != nil || len(failed) != 0 {
		t.Errorf("failed/ holds %d (%v)", len(failed), err)
	}
}

// Every rewrite setting the config can hold reaches the listener and
// delivery as the mode of the same name.
func TestRewriteModeMapsEverySetting(t *testing.T) {
	for _, r := range []config.Rewrite{config.RewriteNone, config.RewriteEnvelope, config.RewriteEnvelopeFrom} {
		if got := rewriteMode(r); got.String() != r.String() {
			t.Errorf("config rewrite %q maps to %q", r, got)
		}
	}
}
