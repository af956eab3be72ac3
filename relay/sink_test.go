package relay

import (
	"context"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/o365relay/o365relay/relay/delivery"
	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/reply"
	"github.com/o365relay/o365relay/relay/smtpd"
)

type fakeSpool struct{ err error }

func (f *fakeSpool) Put(env *envelope.Envelope, body io.Reader) error {
	if _, err := io.Copy(io.Discard, body); err != nil {
		return err
	}
	return f.err
}

type fakeSched struct {
	out      *delivery.Outcome
	err      error
	enqueued []envelope.ID
}

func (f *fakeSched) Enqueued(id envelope.ID) { f.enqueued = append(f.enqueued, id) }
func (f *fakeSched) DeliverNow(context.Context, envelope.ID) (*delivery.Outcome, error) {
	return f.out, f.err
}

// What each attempt outcome becomes for the client. The rule: 250 only for a
// message that is delivered or still queued; a 5xx only when Exchange
// refused every recipient for good; anything the relay can no longer
// deliver is a 4xx so the client keeps it.
func TestSinkReplies(t *testing.T) {
	perm := reply.New(554, reply.EnhancedCode{5, 2, 252}, "SendAsDenied")
	temp := reply.New(451, reply.EnhancedCode{4, 7, 0}, "Temporary server error")
	env := func() *envelope.Envelope { return &envelope.Envelope{ID: "01", To: []string{"a@x", "b@x"}} }
	cases := []struct {
		name     string
		mode     AckMode
		spoolErr error
		out      *delivery.Outcome
		err      error
		want     string // reply prefix, "250" or the code
		enqueued bool
	}{
		{"spool mode", AckSpool, nil, nil, nil, "250 queued", true},
		{"spool full", AckSpool, reply.New(452, reply.EnhancedCode{4, 3, 1}, "full"), nil, nil, "452", false},
		{"delivered", AckUpstream, nil, &delivery.Outcome{Delivered: []string{"a@x", "b@x"}, Removed: true}, nil, "250 delivered", false},
		{"refused for good", AckUpstream, nil, &delivery.Outcome{Failed: map[string]*reply.Error{"a@x": perm, "b@x": perm}, Err: perm, Removed: true}, nil, "554", false},
		{"partly delivered", AckUpstream, nil, &delivery.Outcome{Delivered: []string{"a@x"}, Failed: map[string]*reply.Error{"b@x": perm}, Removed: true}, nil, "250 delivered to 1 of 2", false},
		{"deferred", AckUpstream, nil, &delivery.Outcome{Pending: []string{"a@x", "b@x"}, Err: temp}, nil, "250 queued", false},
		{"removed without a verdict", AckUpstream, nil, &delivery.Outcome{Removed: true, Err: errors.New("corrupt")}, nil, "451", false},
		{"local fault in the attempt", AckUpstream, nil, nil, errors.New("disk"), "250 queued", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sch := &fakeSched{out: tc.out, err: tc.err}
			k := &sink{spool: &fakeSpool{err: tc.spoolErr}, sched: sch, mode: tc.mode}
			text, err := k.Submit(context.Background(), env(), strings.NewReader("body\r\n"))
			got := "250 " + text
			if err != nil {
				rep := smtpd.ForClient(err)
				got = strconv.Itoa(rep.Code) + " " + rep.Message
			}
			code, rest, _ := strings.Cut(tc.want, " ")
			if !strings.HasPrefix(got, code) || !strings.Contains(got, rest) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
			if (len(sch.enqueued) > 0) != tc.enqueued {
				t.Errorf("enqueued %v, want %v", sch.enqueued, tc.enqueued)
			}
		})
	}
}
