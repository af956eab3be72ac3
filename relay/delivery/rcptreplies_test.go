package delivery

import (
	"context"
	"testing"

	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/reply"
)

// A reply to RCPT that is about the sending mailbox or its session, not
// the recipient — the session's token expired (501 5.5.127), the daily
// recipient quota (554 5.2.0), continuous-error throttling (550 5.2.25x),
// a session Exchange no longer considers authenticated (530 5.7.57) —
// fails no recipient. With every recipient refused so (the Exchange
// client then reports that reply for the message), the message stays
// queued and, as for the same reply to MAIL or the data, the attempt does
// not count.
func TestMailboxRepliesAtRcptFailNoRecipient(t *testing.T) {
	t.Parallel()
	for _, rr := range []*reply.Error{
		{Code: 501, Enhanced: reply.EnhancedCode{5, 5, 127}, Text: "Authentication token expired", Stage: reply.StageRcpt},
		{Code: 554, Enhanced: reply.EnhancedCode{5, 2, 0}, Text: "STOREDRV.Submission.Exception:SubmissionQuotaExceededException", Stage: reply.StageRcpt},
		{Code: 550, Enhanced: reply.EnhancedCode{5, 2, 251}, Text: "Sender throttled due to continuous mailbox full errors", Stage: reply.StageRcpt},
		{Code: 530, Enhanced: reply.EnhancedCode{5, 7, 57}, Text: "Client not authenticated to send mail", Stage: reply.StageRcpt},
	} {
		t.Run(rr.Error(), func(t *testing.T) {
			t.Parallel()
			f := setup(t, &fake{steps: []step{func(_ context.Context, env *envelope.Envelope, _ []byte) (*envelope.Result, error) {
				res := &envelope.Result{Rejected: map[string]*reply.Error{}}
				for _, r := range env.To {
					res.Rejected[r] = rr
				}
				return res, rr
			}}})
			out, err := f.s.attempt(context.Background(), f.envID)
			if err != nil || out.Removed || len(out.Failed) != 0 || len(out.Pending) != 2 {
				t.Fatalf("%+v %v; want both recipients kept", out, err)
			}
			if st := f.state(t); st.Attempts != 0 {
				t.Errorf("attempts %d, want 0: not the message's fault", st.Attempts)
			}
			if failed, err := f.sp.ListFailed(); err != nil || len(failed) != 0 {
				t.Errorf("failed/ = %d messages (%v)", len(failed), err)
			}
		})
	}
}
