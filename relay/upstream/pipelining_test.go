package upstream

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/o365relay/o365relay/relay/exchangetest"
	"github.com/o365relay/o365relay/relay/reply"
)

// countingConn counts the writes to the TCP connection (one per TLS
// record written, at least).
type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// TestPipelinedWrites: on a pooled session with a server that offers
// PIPELINING, a 10 KB message costs two writes to the connection: MAIL,
// RCPT and DATA together, then the body with the end of data. go-smtp's
// transaction wrote six (each command, then the body and the end of data
// in 4 KiB pieces).
func TestPipelinedWrites(t *testing.T) {
	t.Parallel()
	var writes atomic.Int64
	e := newEnv(t, setup{client: func(o *Options) {
		o.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return countingConn{Conn: c, writes: &writes}, nil
		}
	}})
	body := "Subject: ten\r\n\r\n" + strings.Repeat(strings.Repeat("x", 76)+"\r\n", 10<<10/78)
	if _, err := e.client.Deliver(ctxT(t), testEnv(), strings.NewReader(body)); err != nil {
		t.Fatal(err) // connects, authenticates
	}
	const n = 3
	before := writes.Load()
	for range n {
		if _, err := e.client.Deliver(ctxT(t), testEnv(), strings.NewReader(body)); err != nil {
			t.Fatal(err)
		}
	}
	if got := (writes.Load() - before) / n; got != 2 {
		t.Errorf("%d writes per message on a pooled session, want 2", got)
	}
	if st := e.fake.Stats(); st.Sessions != 1 {
		t.Errorf("%d sessions, want 1", st.Sessions)
	}
	for _, m := range e.fake.Messages() {
		if string(m.Data) != body {
			t.Fatalf("body differs")
		}
	}
}

// TestTransactionsPipelinedOrNot runs the same transactions against a
// server with and without PIPELINING, one session for all of them: the
// same bytes arrive, a refusal at each step maps to the same reply, and
// the session stays in step afterwards (the next message goes through on
// it).
func TestTransactionsPipelinedOrNot(t *testing.T) {
	t.Parallel()
	for _, noPipelining := range []bool{false, true} {
		name := "pipelining"
		if noPipelining {
			name = "one command at a time"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, setup{fake: func(o *exchangetest.Options) { o.NoPipelining = noPipelining }})
			ctx := ctxT(t)
			body := "Subject: dots\r\n\r\n.one\r\n..two\r\n.\r\nend\r\n"
			send := func(to ...string) (*exchangeResult, error) {
				res, err := e.client.Deliver(ctx, testEnv(to...), strings.NewReader(body))
				if res == nil {
					return nil, err
				}
				return &exchangeResult{accepted: strings.Join(res.Accepted, ","), rejected: len(res.Rejected)}, err
			}
			if _, err := send("a@example.test"); err != nil {
				t.Fatal(err)
			}
			e.fake.Inject(exchangetest.Fault{Stage: exchangetest.StageMail, Reply: smtpErr(451, smtp.EnhancedCode{4, 7, 0}, "Temporary server error")})
			_, err := send("a@example.test")
			wantReply(t, err, 451, smtp.EnhancedCode{4, 7, 0}, reply.StageMail)

			e.fake.Inject(exchangetest.Fault{Stage: exchangetest.StageRcpt, Rcpt: "gone@example.test", Reply: smtpErr(550, smtp.EnhancedCode{5, 1, 10}, "RESOLVER.ADR.RecipientNotFound")})
			r, err := send("gone@example.test", "b@example.test")
			if err != nil || r.accepted != "b@example.test" || r.rejected != 1 {
				t.Fatalf("partial refusal: %+v, %v", r, err)
			}

			e.fake.Inject(exchangetest.Fault{Stage: exchangetest.StageRcpt, Reply: smtpErr(452, smtp.EnhancedCode{4, 5, 3}, "Too many recipients")})
			_, err = send("c@example.test")
			wantReply(t, err, 452, smtp.EnhancedCode{4, 5, 3}, reply.StageRcpt)

			e.fake.Inject(exchangetest.Fault{Stage: exchangetest.StageDot, Reply: smtpErr(554, smtp.EnhancedCode{5, 2, 0}, "STOREDRV.Submission.Exception:SubmissionQuotaExceededException")})
			_, err = send("d@example.test")
			wantReply(t, err, 554, smtp.EnhancedCode{5, 2, 0}, reply.StageData)

			if _, err := send("e@example.test", "f@example.test"); err != nil {
				t.Fatal(err)
			}
			msgs := e.fake.Messages()
			var rcpts []string
			for _, m := range msgs {
				if !bytes.Equal(m.Data, []byte(body)) {
					t.Errorf("body %q", m.Data)
				}
				rcpts = append(rcpts, strings.Join(m.RcptTo, "+"))
			}
			if got := strings.Join(rcpts, ","); got != "a@example.test,b@example.test,e@example.test+f@example.test" {
				t.Errorf("delivered to %s", got)
			}
			if st := e.fake.Stats(); st.Sessions != 1 {
				t.Errorf("%d sessions for all of it, want 1 (the session fell out of step)", st.Sessions)
			}
			checkClean(t, e)
		})
	}
}

type exchangeResult struct {
	accepted string
	rejected int
}

// TestLargeGroupOneCommandAtATime: a transaction whose commands exceed
// maxGroup (here 150 recipients) goes one command at a time, on the same
// session as pipelined ones before and after it.
func TestLargeGroupOneCommandAtATime(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	var many []string
	size := 0
	for i := range 150 {
		many = append(many, fmt.Sprintf("recipient%03d@example.test", i))
		size += len("RCPT TO:<>\r\n") + len(many[i])
	}
	if size <= maxGroup {
		t.Fatalf("150 RCPT lines are %d octets: not over maxGroup", size)
	}
	for _, to := range [][]string{{"a@example.test"}, many, {"b@example.test"}} {
		res, err := e.client.Deliver(ctxT(t), testEnv(to...), strings.NewReader(simpleBody))
		if err != nil || len(res.Accepted) != len(to) {
			t.Fatalf("%d recipients: %+v, %v", len(to), res, err)
		}
	}
	if st := e.fake.Stats(); st.Sessions != 1 {
		t.Errorf("%d sessions, want 1", st.Sessions)
	}
}
