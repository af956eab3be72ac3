package delivery

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/reply"
	"github.com/o365relay/o365relay/relay/spool"
)

type step = func(context.Context, *envelope.Envelope, []byte) (*envelope.Result, error)

func TestReplyClasses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		re       *reply.Error
		next     time.Duration
		attempts int
		healthy  bool
	}{
		{"432 concurrent connections", &reply.Error{Code: 432, Enhanced: reply.EnhancedCode{4, 3, 2}, Text: "Concurrent connections limit exceeded", Stage: reply.StageConnect}, 75 * time.Second, 1, true},
		{"554 5.2.0 quota", &reply.Error{Code: 554, Enhanced: reply.EnhancedCode{5, 2, 0}, Text: "SubmissionQuotaExceededException", Stage: reply.StageData}, time.Hour, 0, false},
		{"550 5.2.252 throttled", &reply.Error{Code: 550, Enhanced: reply.EnhancedCode{5, 2, 252}, Text: "Sender throttled", Stage: reply.StageData}, time.Hour, 0, false},
		{"token", &reply.Error{Code: 451, Enhanced: reply.EnhancedCode{4, 7, 0}, Text: "token service", Stage: reply.StageToken}, time.Minute, 0, false},
		{"535 5.7.139", &reply.Error{Code: 535, Enhanced: reply.EnhancedCode{5, 7, 139}, Text: "SmtpClientAuthentication is disabled", Stage: reply.StageAuth}, time.Minute, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := setup(t, &fake{steps: []step{fails(tc.re)}})
			out, err := f.s.attempt(context.Background(), f.envID)
			if err != nil || out.Removed || len(out.Failed) != 0 || len(out.Pending) != 2 {
				t.Fatalf("%+v %v", out, err)
			}
			st := f.state(t)
			if st.Attempts != tc.attempts || !st.NextAttempt.Equal(t0.Add(tc.next)) {
				t.Errorf("attempts %d next +%v, want %d +%v", st.Attempts, st.NextAttempt.Sub(t0), tc.attempts, tc.next)
			}
			if h := f.s.Health()["relay@example.com"]; h.Healthy != tc.healthy {
				t.Errorf("health %+v", h)
			}
		})
	}
}

// A failure before MAIL FROM holds the mailbox with the stage as its
// cause, whatever the code (5xx included): nothing fails, the attempt is
// not counted, and o365relay_delivery_mailbox_held says why; the next
// success clears it.
func TestPathFailuresHoldTheMailbox(t *testing.T) {
	t.Parallel()
	for _, re := range []*reply.Error{
		{Code: 554, Enhanced: reply.EnhancedCode{5, 3, 2}, Text: "No SMTP service here", Stage: reply.StageConnect},
		{Code: 550, Enhanced: reply.EnhancedCode{5, 7, 1}, Text: "EHLO refused", Stage: reply.StageConnect},
		{Code: 554, Enhanced: reply.EnhancedCode{5, 7, 10}, Text: "does not offer STARTTLS", Stage: reply.StageTLS},
		{Code: 451, Enhanced: reply.EnhancedCode{4, 7, 5}, Text: "TLS certificate not trusted", Stage: reply.StageTLS},
		{Code: 554, Enhanced: reply.EnhancedCode{5, 7, 4}, Text: "does not offer AUTH XOAUTH2", Stage: reply.StageAuth},
		{Code: 504, Enhanced: reply.EnhancedCode{5, 7, 4}, Text: "Unrecognized authentication type", Stage: reply.StageAuth},
		{Code: 421, Enhanced: reply.EnhancedCode{4, 3, 2}, Text: "Service not available", Stage: reply.StageConnect},
	} {
		t.Run(re.Error(), func(t *testing.T) {
			f := setup(t, &fake{steps: []step{fails(re), ok}})
			// A mailbox of its own: the metrics are the process's.
			mb := fmt.Sprintf("path-%s-%d@example.com", re.Stage, re.Code)
			env := &envelope.Envelope{ID: envelope.NewID(t0), From: "app@example.com", To: []string{"a@example.org", "b@example.org"}, Mailbox: mb, Received: t0}
			if err := f.sp.Put(env, strings.NewReader("Subject: hi\r\n\r\nbody\r\n")); err != nil {
				t.Fatal(err)
			}
			f.envID = env.ID
			out, err := f.s.attempt(context.Background(), f.envID)
			if err != nil || out.Removed || len(out.Failed) != 0 || len(out.Pending) != 2 {
				t.Fatalf("%+v %v", out, err)
			}
			if st := f.state(t); st.Attempts != 0 || !st.NextAttempt.Equal(t0.Add(time.Minute)) {
				t.Errorf("attempts %d, next +%v; want 0, +1m", st.Attempts, st.NextAttempt.Sub(t0))
			}
			h := f.s.Health()[mb]
			if h.Healthy || h.Cause != string(re.Stage) || !h.HeldUntil.Equal(t0.Add(time.Minute)) {
				t.Errorf("health %+v", h)
			}
			if v := testutil.ToFloat64(mailboxHeld.WithLabelValues(mb, string(re.Stage))); v != 1 {
				t.Errorf("o365relay_delivery_mailbox_held{reason=%q} = %v", re.Stage, v)
			}
			f.clk.Set(t0.Add(time.Minute))
			if out, err := f.s.attempt(context.Background(), f.envID); err != nil || !out.Removed || len(out.Delivered) != 2 {
				t.Fatalf("after the hold: %+v %v", out, err)
			}
			if h := f.s.Health()[mb]; !h.Healthy || h.Cause != "" {
				t.Errorf("after success: %+v", h)
			}
			if mailboxHeld.DeleteLabelValues(mb, string(re.Stage)) {
				t.Errorf("held{reason=%q} still shown after recovery", re.Stage)
			}
		})
	}
}

// Attempts already under way when the path fails all fail the same way;
// the hold they find is kept, not doubled once per attempt. Only a probe
// (an attempt made when the hold had ended) lengthens it.
func TestConcurrentPathFailuresHoldOnce(t *testing.T) {
	t.Parallel()
	f := setup(t, &fake{})
	re := &reply.Error{Code: 451, Enhanced: reply.EnhancedCode{4, 4, 1}, Text: "connection refused", Stage: reply.StageConnect}
	log := f.s.log
	for i, want := range []time.Duration{time.Minute, time.Minute, time.Minute} {
		if d := f.s.classify(log, "mb", re, t0); !d.keep || !d.next.Equal(t0.Add(want)) {
			t.Errorf("attempt %d under way: next +%v, want +%v", i+1, d.next.Sub(t0), want)
		}
	}
	probe := t0.Add(time.Minute)
	if d := f.s.classify(log, "mb", re, probe); !d.next.Equal(probe.Add(2 * time.Minute)) {
		t.Errorf("failed probe: next +%v after it, want +2m", d.next.Sub(probe))
	}
}

func TestCorruptBodyQuarantined(t *testing.T) {
	t.Parallel()
	f := setup(t, &fake{steps: []step{ok}})
	p := filepath.Join(f.dir, "queue", string(f.envID)+".msg")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-25] ^= 1 // last body byte before the 20-byte trailer
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := f.s.attempt(context.Background(), f.envID)
	if err != nil || !out.Removed || !errors.Is(out.Err, spool.ErrCorrupt) || f.fw.n() != 0 {
		t.Fatalf("%+v %v, %d calls", out, err, f.fw.n())
	}
	if des, err := os.ReadDir(filepath.Join(f.dir, "corrupt")); err != nil || len(des) == 0 {
		t.Errorf("corrupt/ = %v %v", des, err)
	}
}

func TestCLIRetryPickedUpByRescan(t *testing.T) {
	t.Parallel()
	f := setup(t, &fake{steps: []step{fails(temp)}})
	f.s.start()
	f.work(t)
	if err := f.s.Rescan(); err != nil {
		t.Fatal(err)
	}
	if due, _ := f.s.due.when(f.envID); !due.Equal(t0.Add(time.Minute)) {
		t.Fatalf("due %v", due)
	}
	admin, err := spool.OpenAdmin(spool.Options{Dir: f.dir, Fsync: true, Clock: func() time.Time { return t0.Add(10 * time.Second) }})
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.Retry(f.envID); err != nil {
		t.Fatal(err)
	}
	if err := admin.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.s.Rescan(); err != nil {
		t.Fatal(err)
	}
	if due, _ := f.s.due.when(f.envID); !due.Equal(t0.Add(10 * time.Second)) {
		t.Errorf("after CLI retry due %v, want +10s", due.Sub(t0))
	}
}
