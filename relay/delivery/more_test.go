package delivery

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/o365relay/o365relay/relay/message"
	"github.com/o365relay/o365relay/relay/reply"
	"github.com/o365relay/o365relay/relay/spool"
)

type step = func(context.Context, *message.Envelope, []byte) (*message.Result, error)

func TestReplyClasses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		re       *reply.Error
		next     time.Duration
		attempts int
		healthy  bool
	}{
		{"432 concurrent connections", &reply.Error{Code: 432, Enhanced: smtp.EnhancedCode{4, 3, 2}, Text: "Concurrent connections limit exceeded", Stage: reply.StageConnect}, 75 * time.Second, 1, true},
		{"554 5.2.0 quota", &reply.Error{Code: 554, Enhanced: smtp.EnhancedCode{5, 2, 0}, Text: "SubmissionQuotaExceededException", Stage: reply.StageData}, time.Hour, 0, false},
		{"550 5.2.252 throttled", &reply.Error{Code: 550, Enhanced: smtp.EnhancedCode{5, 2, 252}, Text: "Sender throttled", Stage: reply.StageData}, time.Hour, 0, false},
		{"token", &reply.Error{Code: 451, Enhanced: smtp.EnhancedCode{4, 7, 0}, Text: "token service", Stage: reply.StageToken}, time.Minute, 0, false},
		{"535 5.7.139", &reply.Error{Code: 535, Enhanced: smtp.EnhancedCode{5, 7, 139}, Text: "SmtpClientAuthentication is disabled", Stage: reply.StageAuth}, time.Minute, 0, false},
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
