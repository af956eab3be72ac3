package relay

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/o365relay/o365relay/config/tlstest"
	"github.com/o365relay/o365relay/relay/exchangetest"
)

// Everything before MAIL FROM is the relay's path to Exchange, never a
// message's fault: for each way that path can fail, Exchange fails the
// first sessions and is healthy afterwards, and every acknowledged message
// is delivered exactly once, nothing lands in failed/, and no credential
// is ever sent outside TLS.
func TestPathFailuresNeverFailMessages(t *testing.T) {
	t.Parallel()
	other, err := tlstest.NewCA("not the relay's CA")
	if err != nil {
		t.Fatal(err)
	}
	untrusted, err := other.ServerCert()
	if err != nil {
		t.Fatal(err)
	}
	rep := func(code int, enh smtp.EnhancedCode, text string) *smtp.SMTPError {
		return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: text}
	}
	const k = 3 // sessions that fail
	for _, tc := range []struct {
		name  string
		fault exchangetest.Fault
	}{
		{"connection dropped", exchangetest.Fault{Stage: exchangetest.StageConnect, Drop: true}},
		{"greeting 554", exchangetest.Fault{Stage: exchangetest.StageConnect, Reply: rep(554, smtp.EnhancedCode{5, 3, 2}, "No SMTP service here")}},
		{"greeting 421", exchangetest.Fault{Stage: exchangetest.StageConnect, Reply: rep(421, smtp.EnhancedCode{4, 3, 2}, "Service not available")}},
		{"EHLO 550", exchangetest.Fault{Stage: exchangetest.StageEHLO, Reply: rep(550, smtp.EnhancedCode{5, 7, 1}, "Access denied")}},
		{"STARTTLS not offered", exchangetest.Fault{Stage: exchangetest.StageNoSTARTTLS}},
		{"STARTTLS 454", exchangetest.Fault{Stage: exchangetest.StageSTARTTLS, Reply: rep(454, smtp.EnhancedCode{4, 7, 0}, "TLS not available")}},
		{"STARTTLS 554", exchangetest.Fault{Stage: exchangetest.StageSTARTTLS, Reply: rep(554, smtp.EnhancedCode{5, 7, 0}, "TLS refused")}},
		{"TLS certificate untrusted", exchangetest.Fault{Stage: exchangetest.StageTLS, Certificate: &untrusted}},
		{"TLS handshake cut", exchangetest.Fault{Stage: exchangetest.StageTLS, Drop: true}},
		{"XOAUTH2 not offered", exchangetest.Fault{Stage: exchangetest.StageNoXOAUTH2}},
		{"AUTH 504", exchangetest.Fault{Stage: exchangetest.StageAuth, Reply: rep(504, smtp.EnhancedCode{5, 7, 4}, "Unrecognized authentication type")}},
		{"AUTH 554", exchangetest.Fault{Stage: exchangetest.StageAuth, Reply: rep(554, smtp.EnhancedCode{5, 7, 0}, "Authentication refused")}},
		{"AUTH 535", exchangetest.Fault{Stage: exchangetest.StageAuth, Reply: rep(535, smtp.EnhancedCode{5, 7, 3}, "Authentication unsuccessful")}},
		{"AUTH 454", exchangetest.Fault{Stage: exchangetest.StageAuth, Reply: rep(454, smtp.EnhancedCode{4, 7, 0}, "Temporary authentication failure")}},
		{"AUTH dropped", exchangetest.Fault{Stage: exchangetest.StageAuth, Drop: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := startPipeline(t, pipelineOptions{settings: map[string]string{
				"ack": "spool", "retry_min": "100ms", "retry_max": "400ms",
			}})
			f := tc.fault
			f.Times = k
			p.cloud.Exchange.Inject(f)
			const n = 3
			for i := range n {
				p.sendPlain(t, fmt.Sprintf("path failure %d", i))
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if err := p.cloud.Exchange.WaitMessages(ctx, n); err != nil {
				failed, _ := p.r.Spool().ListFailed()
				t.Fatalf("%v; %d in failed/", err, len(failed))
			}
			if left := p.cloud.Exchange.PendingFaults(); left != 0 {
				t.Errorf("%d of the %d faulty sessions never happened", left, k)
			}
			var subjects []string
			for _, m := range p.cloud.Exchange.Messages() {
				i := strings.Index(string(m.Data), "Subject: ")
				subjects = append(subjects, strings.SplitN(string(m.Data[i:]), "\r\n", 2)[0])
			}
			sort.Strings(subjects)
			if want := []string{"Subject: path failure 0", "Subject: path failure 1", "Subject: path failure 2"}; strings.Join(subjects, "|") != strings.Join(want, "|") {
				t.Errorf("Exchange got %q, want each message once", subjects)
			}
			if failed, err := p.r.Spool().ListFailed(); err != nil || len(failed) != 0 {
				t.Errorf("failed/ holds %d messages (%v)", len(failed), err)
			}
			if v := p.cloud.Exchange.Violations(); len(v) > 0 || p.cloud.Exchange.PlainAuthAttempts() > 0 {
				t.Errorf("violations %q, AUTH before TLS %d", v, p.cloud.Exchange.PlainAuthAttempts())
			}
		})
	}
}

// sendPlain hands the relay one ordinary message and expects its 250.
func (p *pipeline) sendPlain(tb testing.TB, subject string) {
	tb.Helper()
	sc := p.dial(tb)
	defer sc.close()
	for _, c := range []string{"EHLO app.example\r\n", "MAIL FROM:<" + "app@trusted.example" + ">\r\n", "RCPT TO:<x@fabrikam.example>\r\n", "DATA\r\n",
		"Subject: " + subject + "\r\n\r\nbody\r\n.\r\n"} {
		rep := sc.mustCmd(tb, c)
		if !strings.HasPrefix(rep, "250 ") && !strings.HasPrefix(rep, "354 ") {
			tb.Fatalf("%q: %q", c, rep)
		}
	}
}
