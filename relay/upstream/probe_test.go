package upstream

import (
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/o365relay/o365relay/relay/exchangetest"
	"github.com/o365relay/o365relay/relay/reply"
)

func stepNames(pr *ProbeResult) string {
	var names []string
	for _, s := range pr.Steps {
		names = append(names, s.Name)
	}
	return strings.Join(names, ",")
}

// ProbeTLS checks the endpoint without a token: nothing is requested from
// the token source, nothing authenticates.
func TestProbeTLS(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	pr, err := e.client.ProbeTLS(ctxT(t))
	if err != nil {
		t.Fatalf("ProbeTLS: %v", err)
	}
	if got := stepNames(pr); got != "connect,tls,quit" || !pr.Verified || pr.TLSVersion == "" {
		t.Errorf("steps %s, %+v", got, pr)
	}
	if st := e.fake.Stats(); st.Auths+st.AuthFailures != 0 || e.tokens.refreshes() != 0 {
		t.Errorf("ProbeTLS authenticated: %+v", st)
	}
	if st := e.client.Stats(); st.Open != 0 {
		t.Errorf("left a connection open: %+v", st)
	}
}

// ProbeSend runs one transaction on the probed connection and reports
// Exchange's reply as it is.
func TestProbeSend(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	pr, err := e.client.ProbeSend(ctxT(t), testEnv(), strings.NewReader(simpleBody))
	if err != nil {
		t.Fatalf("ProbeSend: %v (%+v)", err, pr)
	}
	if got := stepNames(pr); got != "connect,tls,token,auth,send,quit" {
		t.Errorf("steps %s", got)
	}
	if pr.Result == nil || !strings.Contains(pr.Result.Reply, "@fake>") {
		t.Errorf("result %+v", pr.Result)
	}
	if m := e.fake.Messages(); len(m) != 1 || m[0].Session != 1 || string(m[0].Data) != simpleBody {
		t.Errorf("messages %+v", m)
	}

	env := testEnv()
	env.From = "ceo@contoso.test"
	pr, err = e.client.ProbeSend(ctxT(t), env, strings.NewReader(simpleBody))
	wantReply(t, err, 550, smtp.EnhancedCode{5, 7, 60}, reply.StageMail)
	if f := pr.Failed(); f == nil || f.Name != StepSend {
		t.Errorf("failed step %+v", f)
	}
	if st := e.client.Stats(); st.Open != 0 {
		t.Errorf("left a connection open: %+v", st)
	}
}

// AuthHint is the daemon's and the doctor's one line for setup refusals.
func TestAuthHint(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{fake: func(o *exchangetest.Options) {
		o.Mailboxes["disabled@contoso.test"] = exchangetest.Mailbox{Apps: []string{appID}, AuthDisabled: true}
	}})
	for _, tc := range []struct {
		mailbox string
		want    []string
	}{
		{"nobody@contoso.test", []string{"admin consent", "New-ServicePrincipal", "Add-MailboxPermission", "step 6"}},
		{"disabled@contoso.test", []string{"Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled $false", "Security Defaults", "step 7"}},
	} {
		_, err := e.client.Probe(ctxT(t), tc.mailbox)
		h := AuthHint(err)
		for _, w := range tc.want {
			if !strings.Contains(h, w) {
				t.Errorf("%s: hint %q lacks %q", tc.mailbox, h, w)
			}
		}
	}
	if h := AuthHint(reply.New(451, reply.EnhancedCode{4, 3, 0}, "disk full")); h != "" {
		t.Errorf("hint for a local 451: %q", h)
	}
	if h := AuthHint(nil); h != "" {
		t.Errorf("hint for nil: %q", h)
	}
}
