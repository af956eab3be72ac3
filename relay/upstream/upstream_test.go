package upstream

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/o365relay/o365relay/config/tlstest"
	"github.com/o365relay/o365relay/relay/exchangetest"
	"github.com/o365relay/o365relay/relay/reply"
)

// checkClean asserts the fake saw only correct client behaviour: every
// session upgraded to TLS before AUTH, no violations.
func checkClean(t *testing.T, e *env) {
	t.Helper()
	st := e.fake.Stats()
	if st.AuthBeforeTLS != 0 {
		t.Errorf("AUTH before TLS: %d", st.AuthBeforeTLS)
	}
	if v := e.fake.Violations(); len(v) != 0 {
		t.Errorf("violations: %q", v)
	}
}

func TestDeliverByteIdentical(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	long := strings.Repeat("x", 998)
	body := "From: Relay <relay@contoso.test>\r\nTo: someone@example.test\r\nSubject: =?utf-8?q?gr=C3=BC=C3=9Fe?=\r\n\r\n" +
		".leading dot\r\n..two dots\r\n.\r\n" + // the dot line alone must not end the data
		"8-bit: gr\xc3\xbc\xc3\x9fe \xff\xfe\r\n" + long + "\r\n" +
		"last line without dot\r\n"
	env := testEnv("a@example.test", "b@example.test")
	res, err := e.client.Deliver(ctxT(t), env, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Accepted) != 2 || len(res.Rejected) != 0 || !strings.Contains(res.Reply, "OK <") {
		t.Errorf("result %+v", res)
	}
	msgs := e.fake.Messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages", len(msgs))
	}
	m := msgs[0]
	if !bytes.Equal(m.Data, []byte(body)) {
		t.Errorf("data differs:\n got %q\nwant %q", m.Data, body)
	}
	if !m.TLS || m.AuthUser != mailbox || m.AppID != appID || m.MailFrom != mailbox ||
		strings.Join(m.RcptTo, ",") != "a@example.test,b@example.test" || m.BodyType != smtp.Body8BitMIME {
		t.Errorf("message %+v", m)
	}
	st := e.fake.Stats()
	if st.Sessions != 1 || st.TLSSessions != 1 || st.Auths != 1 {
		t.Errorf("fake stats %+v", st)
	}
	checkClean(t, e)
}

func TestDeliverSMTPUTF8(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	env := testEnv("jörg@bücher.example")
	env.SMTPUTF8 = true
	if _, err := e.client.Deliver(ctxT(t), env, strings.NewReader(simpleBody)); err != nil {
		t.Fatal(err)
	}
	m := e.fake.Messages()
	if len(m) != 1 || !m[0].SMTPUTF8 || m[0].RcptTo[0] != "jörg@bücher.example" {
		t.Errorf("messages %+v", m)
	}
}

// genBody streams about size bytes of CRLF lines (some starting with a dot,
// some 8-bit, up to ~920 bytes long) without holding them. It ends at a
// line end, as messages from the spool do (the DotWriter adds a CRLF
// otherwise).
type genBody struct {
	size, off int64
	line      int
	pending   []byte
}

func (g *genBody) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) && (g.off < g.size || len(g.pending) > 0) {
		if len(g.pending) == 0 {
			g.line++
			switch g.line % 5 {
			case 0:
				g.pending = []byte(".dot-stuffed line\r\n")
			case 1:
				g.pending = fmt.Appendf(nil, "line %d gr\xc3\xbc\xc3\x9fe %s\r\n", g.line, strings.Repeat("a", g.line%900))
			default:
				g.pending = fmt.Appendf(nil, "line %d\r\n", g.line)
			}
			if g.line == 1 {
				g.pending = []byte("From: relay@contoso.test\r\nSubject: big\r\n\r\n")
			}
		}
		k := copy(p[n:], g.pending)
		g.pending = g.pending[k:]
		n += k
		g.off += int64(k)
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

func TestDeliverLarge(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("20 MB through TLS takes seconds under -race")
	}
	const size = 20 << 20
	e := newEnv(t, setup{fake: func(o *exchangetest.Options) { o.Discard = true }})
	h := sha256.New()
	n, err := io.Copy(h, &genBody{size: size})
	if err != nil || n < size {
		t.Fatal(n, err)
	}
	if _, err := e.client.Deliver(ctxT(t), testEnv(), &genBody{size: size}); err != nil {
		t.Fatal(err)
	}
	m := e.fake.Messages()
	if len(m) != 1 {
		t.Fatalf("%d messages", len(m))
	}
	var want [32]byte
	copy(want[:], h.Sum(nil))
	if m[0].Size != n || m[0].SHA256 != want || m[0].Data != nil {
		t.Errorf("got %d bytes sha %x, want %d bytes sha %x", m[0].Size, m[0].SHA256, n, want)
	}
}

func TestNoSTARTTLS(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{fake: func(o *exchangetest.Options) { o.NoSTARTTLS = true }})
	_, err := e.client.Deliver(ctxT(t), testEnv(), strings.NewReader(simpleBody))
	re := wantReply(t, err, 554, smtp.EnhancedCode{5, 7, 10}, reply.StageTLS)
	if !strings.Contains(re.Text, "STARTTLS") {
		t.Errorf("text %q does not say why", re.Text)
	}
	st := e.fake.Stats()
	if st.Auths+st.AuthFailures+st.AuthBeforeTLS != 0 || len(e.fake.Messages()) != 0 {
		t.Errorf("AUTH was attempted: %+v", st)
	}
	checkClean(t, e)
}

func TestUntrustedCertificate(t *testing.T) {
	t.Parallel()
	other, err := tlstest.NewCA("someone else's CA")
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, setup{client: func(o *Options) { o.RootCAs = other.Pool() }})
	_, err = e.client.Deliver(ctxT(t), testEnv(), strings.NewReader(simpleBody))
	re := wantReply(t, err, 451, smtp.EnhancedCode{4, 7, 5}, reply.StageTLS)
	if !strings.Contains(re.Text, "localhost") || !strings.Contains(re.Text, "not trusted") {
		t.Errorf("text %q should name the host and say the certificate is not trusted", re.Text)
	}
	st := e.fake.Stats()
	if st.Auths+st.AuthFailures+st.AuthBeforeTLS != 0 {
		t.Errorf("AUTH was attempted: %+v", st)
	}

	// Probe records the certificate it refused.
	pr, err := e.client.Probe(ctxT(t), mailbox)
	if err == nil || pr.Failed() == nil || pr.Failed().Name != StepTLS || pr.Verified {
		t.Fatalf("probe %+v, %v", pr, err)
	}
	if !strings.Contains(pr.PeerIssuer, "upstream test CA") {
		t.Errorf("PeerIssuer %q", pr.PeerIssuer)
	}
}

func TestWrongServerName(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{client: func(o *Options) { o.ServerName = "smtp.office365.com" }})
	_, err := e.client.Deliver(ctxT(t), testEnv(), strings.NewReader(simpleBody))
	re := wantReply(t, err, 451, smtp.EnhancedCode{4, 7, 5}, reply.StageTLS)
	if !strings.Contains(re.Text, "smtp.office365.com") || !strings.Contains(re.Text, "not trusted") {
		t.Errorf("text %q", re.Text)
	}
}

func TestRefreshOnceThenSuccess(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{badToks: 1})
	if _, err := e.client.Deliver(ctxT(t), testEnv(), strings.NewReader(simpleBody)); err != nil {
		t.Fatal(err)
	}
	if r := e.tokens.refreshes(); r != 1 {
		t.Errorf("refreshes = %d, want 1", r)
	}
	if st := e.fake.Stats(); st.AuthFailures != 1 || st.Auths != 1 || len(e.fake.Messages()) != 1 {
		t.Errorf("fake stats %+v", st)
	}
	checkClean(t, e)
}

func TestRefreshOnceThenFail(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{badToks: 2})
	_, err := e.client.Deliver(ctxT(t), testEnv(), strings.NewReader(simpleBody))
	wantReply(t, err, 535, smtp.EnhancedCode{5, 7, 3}, reply.StageAuth, e.tokens.current())
	if r := e.tokens.refreshes(); r != 1 {
		t.Errorf("refreshes = %d, want exactly 1", r)
	}
	if st := e.fake.Stats(); st.AuthFailures != 2 || st.Auths != 0 {
		t.Errorf("fake stats %+v", st)
	}
	checkClean(t, e)
}

func TestJSONErrorChallenge(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{badToks: 2, fake: func(o *exchangetest.Options) { o.JSONErrorChallenge = true }})
	_, err := e.client.Deliver(ctxT(t), testEnv(), strings.NewReader(simpleBody))
	wantReply(t, err, 535, smtp.EnhancedCode{5, 7, 3}, reply.StageAuth, e.tokens.current())
	checkClean(t, e)
}

func TestTokenSourceError(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	e.tokens.err = errors.New("AADSTS700027: assertion failed")
	_, err := e.client.Deliver(ctxT(t), testEnv(), strings.NewReader(simpleBody))
	wantReply(t, err, 451, smtp.EnhancedCode{4, 7, 0}, reply.StageToken)
	if st := e.fake.Stats(); st.Sessions != 0 {
		t.Errorf("connected without a token: %+v", st)
	}
}

func smtpErr(code int, enh smtp.EnhancedCode, text string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: text}
}

func TestFaults(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		faults []exchangetest.Fault
		code   int
		enh    smtp.EnhancedCode
		stage  reply.Stage
	}{
		{"connect 421", []exchangetest.Fault{{Stage: "connect", Reply: smtpErr(421, smtp.EnhancedCode{4, 3, 2}, "Service not available")}}, 421, smtp.EnhancedCode{4, 3, 2}, reply.StageConnect},
		{"connect drop", []exchangetest.Fault{{Stage: "connect", Drop: true}}, 451, smtp.EnhancedCode{4, 4, 1}, reply.StageConnect},
		{"ehlo 421", []exchangetest.Fault{{Stage: "ehlo", Reply: smtpErr(421, smtp.EnhancedCode{4, 3, 2}, "Service not available")}}, 421, smtp.EnhancedCode{4, 3, 2}, reply.StageConnect},
		{"starttls 454", []exchangetest.Fault{{Stage: "starttls", Reply: smtpErr(454, smtp.EnhancedCode{4, 7, 0}, "TLS not available")}}, 454, smtp.EnhancedCode{4, 7, 0}, reply.StageTLS},
		{"starttls drop", []exchangetest.Fault{{Stage: "starttls", Drop: true}}, 451, smtp.EnhancedCode{4, 4, 2}, reply.StageTLS},
		{"auth 432", []exchangetest.Fault{{Stage: "auth", Reply: smtpErr(432, smtp.EnhancedCode{4, 3, 2}, "Concurrent connections limit exceeded")}}, 432, smtp.EnhancedCode{4, 3, 2}, reply.StageAuth},
		{"auth 535 twice", []exchangetest.Fault{{Stage: "auth", Reply: smtpErr(535, smtp.EnhancedCode{5, 7, 3}, "Authentication unsuccessful"), Times: 2}}, 535, smtp.EnhancedCode{5, 7, 3}, reply.StageAuth},
		{"auth 535 5.7.139", []exchangetest.Fault{{Stage: "auth", Reply: smtpErr(535, smtp.EnhancedCode{5, 7, 139}, "SmtpClientAuthentication is disabled for the Tenant"), Times: 2}}, 535, smtp.EnhancedCode{5, 7, 139}, reply.StageAuth},
		{"auth drop", []exchangetest.Fault{{Stage: "auth", Drop: true}}, 451, smtp.EnhancedCode{4, 4, 2}, reply.StageAuth},
		{"mail 451", []exchangetest.Fault{{Stage: "mail", Reply: smtpErr(451, smtp.EnhancedCode{4, 7, 0}, "Temporary server error")}}, 451, smtp.EnhancedCode{4, 7, 0}, reply.StageMail},
		{"mail 421", []exchangetest.Fault{{Stage: "mail", Reply: smtpErr(421, smtp.EnhancedCode{4, 3, 2}, "Service not available")}}, 421, smtp.EnhancedCode{4, 3, 2}, reply.StageMail},
		{"mail 501 5.5.127 twice", []exchangetest.Fault{{Stage: "mail", Reply: smtpErr(501, smtp.EnhancedCode{5, 5, 127}, "SMTPSEND.Bad sender"), Times: 2}}, 501, smtp.EnhancedCode{5, 5, 127}, reply.StageMail},
		{"rcpt 550 only rcpt", []exchangetest.Fault{{Stage: "rcpt", Reply: smtpErr(550, smtp.EnhancedCode{5, 1, 1}, "RESOLVER.ADR.RecipNotFound")}}, 550, smtp.EnhancedCode{5, 1, 1}, reply.StageRcpt},
		{"rcpt drop", []exchangetest.Fault{{Stage: "rcpt", Drop: true}}, 451, smtp.EnhancedCode{4, 4, 2}, reply.StageRcpt},
		{"data 554 quota", []exchangetest.Fault{{Stage: "data", Reply: smtpErr(554, smtp.EnhancedCode{5, 2, 0}, "STOREDRV.Submission.Exception:SubmissionQuotaExceededException")}}, 554, smtp.EnhancedCode{5, 2, 0}, reply.StageData},
		{"data drop", []exchangetest.Fault{{Stage: "data", Drop: true}}, 451, smtp.EnhancedCode{4, 4, 2}, reply.StageData},
		{"dot 451", []exchangetest.Fault{{Stage: "dot", Reply: smtpErr(451, smtp.EnhancedCode{4, 7, 0}, "Temporary server error")}}, 451, smtp.EnhancedCode{4, 7, 0}, reply.StageData},
		{"dot drop", []exchangetest.Fault{{Stage: "dot", Drop: true}}, 451, smtp.EnhancedCode{4, 4, 2}, reply.StageData},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, setup{})
			for _, f := range tc.faults {
				e.fake.Inject(f)
			}
			_, err := e.client.Deliver(ctxT(t), testEnv(), strings.NewReader(simpleBody))
			wantReply(t, err, tc.code, tc.enh, tc.stage, e.tokens.current())
			if n := len(e.fake.Messages()); n != 0 {
				t.Errorf("fake recorded %d messages", n)
			}
			checkClean(t, e)
		})
	}
}

func TestOutage(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	e.fake.SetDown(true)
	_, err := e.client.Deliver(ctxT(t), testEnv(), strings.NewReader(simpleBody))
	wantReply(t, err, 451, smtp.EnhancedCode{4, 4, 1}, reply.StageConnect)
	e.fake.SetDown(false)
	if _, err := e.client.Deliver(ctxT(t), testEnv(), strings.NewReader(simpleBody)); err != nil {
		t.Fatalf("after outage: %v", err)
	}
}

func TestPartialRcptRejection(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	e.fake.Inject(exchangetest.Fault{Stage: "rcpt", Rcpt: "gone@example.test", Reply: smtpErr(550, smtp.EnhancedCode{5, 1, 10}, "RESOLVER.ADR.RecipientNotFound")})
	e.fake.Inject(exchangetest.Fault{Stage: "rcpt", Rcpt: "busy@example.test", Reply: smtpErr(452, smtp.EnhancedCode{4, 5, 3}, "Too many recipients")})
	res, err := e.client.Deliver(ctxT(t), testEnv("a@example.test", "gone@example.test", "busy@example.test", "b@example.test"), strings.NewReader(simpleBody))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(res.Accepted, ",") != "a@example.test,b@example.test" || len(res.Rejected) != 2 {
		t.Fatalf("result %+v", res)
	}
	wantReply(t, res.Rejected["gone@example.test"], 550, smtp.EnhancedCode{5, 1, 10}, reply.StageRcpt)
	wantReply(t, res.Rejected["busy@example.test"], 452, smtp.EnhancedCode{4, 5, 3}, reply.StageRcpt)
	if m := e.fake.Messages(); len(m) != 1 || strings.Join(m[0].RcptTo, ",") != "a@example.test,b@example.test" {
		t.Errorf("messages %+v", m)
	}
}

func TestAllRcptRejectedPrefersTemporary(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	e.fake.Inject(exchangetest.Fault{Stage: "rcpt", Rcpt: "a@example.test", Reply: smtpErr(550, smtp.EnhancedCode{5, 1, 1}, "unknown")})
	e.fake.Inject(exchangetest.Fault{Stage: "rcpt", Rcpt: "b@example.test", Reply: smtpErr(452, smtp.EnhancedCode{4, 5, 3}, "later")})
	res, err := e.client.Deliver(ctxT(t), testEnv("a@example.test", "b@example.test"), strings.NewReader(simpleBody))
	wantReply(t, err, 452, smtp.EnhancedCode{4, 5, 3}, reply.StageRcpt)
	if res == nil || len(res.Rejected) != 2 || len(res.Accepted) != 0 {
		t.Errorf("result %+v", res)
	}
}

// failingBody returns n bytes, then err.
type failingBody struct {
	n   int
	err error
}

func (f *failingBody) Read(p []byte) (int, error) {
	if f.n == 0 {
		return 0, f.err
	}
	k := min(len(p), f.n)
	for i := range p[:k] {
		p[i] = 'a'
		if i%100 == 99 {
			p[i] = '\n'
		}
	}
	f.n -= k
	return k, nil
}

func TestBodyErrorAbortsWithoutDot(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	bodyErr := errors.New("spool: checksum mismatch")
	_, err := e.client.Deliver(ctxT(t), testEnv(), io.MultiReader(strings.NewReader("From: relay@contoso.test\r\n\r\n"), &failingBody{n: 256 << 10, err: bodyErr}))
	wantReply(t, err, 451, smtp.EnhancedCode{4, 3, 0}, reply.StageData)
	if !errors.Is(err, bodyErr) {
		t.Errorf("error %v does not wrap the body error", err)
	}
	if n := len(e.fake.Messages()); n != 0 {
		t.Errorf("fake accepted %d messages from a truncated body", n)
	}
	if st := e.client.Stats(); st.Open != 0 {
		t.Errorf("connection left open: %+v", st)
	}
	// The next message goes through on a new connection.
	if _, err := e.client.Deliver(ctxT(t), testEnv(), strings.NewReader(simpleBody)); err != nil {
		t.Fatal(err)
	}
	if st := e.client.Stats(); st.Dials != 2 {
		t.Errorf("stats %+v", st)
	}
}

func TestSendAsDeniedIsPermanent(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	body := "From: ceo@contoso.test\r\nSubject: x\r\n\r\nhi\r\n"
	_, err := e.client.Deliver(ctxT(t), testEnv(), strings.NewReader(body))
	re := wantReply(t, err, 554, smtp.EnhancedCode{5, 2, 252}, reply.StageData)
	if !strings.Contains(re.Text, "SendAsDenied") {
		t.Errorf("text %q", re.Text)
	}
	// The envelope sender is checked at MAIL.
	env := testEnv()
	env.From = "ceo@contoso.test"
	_, err = e.client.Deliver(ctxT(t), env, strings.NewReader(simpleBody))
	wantReply(t, err, 550, smtp.EnhancedCode{5, 7, 60}, reply.StageMail)
}

func TestBadMailbox(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	env := testEnv()
	env.Mailbox = "relay@contoso.test\r\nRCPT TO:<x@y>"
	_, err := e.client.Deliver(ctxT(t), env, strings.NewReader(simpleBody))
	wantReply(t, err, 554, smtp.EnhancedCode{5, 7, 0}, reply.StageAuth)
	if st := e.fake.Stats(); st.Sessions != 0 {
		t.Errorf("connected: %+v", st)
	}
}

func TestContextCancelled(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := e.client.Deliver(ctx, testEnv(), strings.NewReader(simpleBody))
	var re *reply.Error
	if !errors.As(err, &re) || !re.Temporary() {
		t.Errorf("err = %v", err)
	}
}

func TestProbe(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	pr, err := e.client.Probe(ctxT(t), mailbox)
	if err != nil {
		t.Fatalf("Probe: %v (%+v)", err, pr)
	}
	var names []string
	for _, s := range pr.Steps {
		names = append(names, s.Name)
	}
	if strings.Join(names, ",") != "connect,tls,token,auth,quit" || pr.Failed() != nil {
		t.Errorf("steps %v", names)
	}
	if !pr.Verified || !strings.HasPrefix(pr.TLSVersion, "TLS 1.") || pr.CipherSuite == "" || pr.PeerSubject == "" ||
		pr.PeerNotAfter.Before(time.Now()) {
		t.Errorf("probe %+v", pr)
	}
	if len(e.fake.Messages()) != 0 {
		t.Error("probe sent mail")
	}
	if st := e.client.Stats(); st.Open != 0 {
		t.Errorf("probe left a connection open: %+v", st)
	}

	pr, err = e.client.Probe(ctxT(t), "nobody@contoso.test")
	wantReply(t, err, 535, smtp.EnhancedCode{5, 7, 3}, reply.StageAuth)
	if pr.Failed() == nil || pr.Failed().Name != StepAuth {
		t.Errorf("failed step %+v", pr.Failed())
	}
	if st := e.client.Stats(); st.Open != 0 {
		t.Errorf("probe left a connection open: %+v", st)
	}
}

func TestOversizedRefusedAtMail(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	env := testEnv()
	env.Size = 200 << 20
	_, err := e.client.Deliver(ctxT(t), env, strings.NewReader(simpleBody))
	wantReply(t, err, 552, smtp.EnhancedCode{5, 3, 4}, reply.StageMail)
}

// Only canonical mailboxes go on the wire: CR/LF injection, an unquoted
// text that once was a quoted local part (what an older version spooled),
// a parameter riding in the address. Each fails the message at once, with
// no connection made.
func TestBadAddresses(t *testing.T) {
	t.Parallel()
	e := newEnv(t, setup{})
	for _, to := range []string{"a@example.test\r\nDATA", "john smith@example.test", "a@b> NOTIFY=NEVER", `"a@b"@c.example`, ""} {
		_, err := e.client.Deliver(ctxT(t), testEnv(to), strings.NewReader(simpleBody))
		wantReply(t, err, 553, smtp.EnhancedCode{5, 1, 3}, reply.StageLocal)
	}
	for _, from := range []string{"x@y\nRSET", "billing@app.example> AUTH=<x@trusted.example", `"billing"@app.example`} {
		env := testEnv()
		env.From = from
		_, err := e.client.Deliver(ctxT(t), env, strings.NewReader(simpleBody))
		wantReply(t, err, 553, smtp.EnhancedCode{5, 1, 7}, reply.StageLocal)
	}
	if st := e.fake.Stats(); st.Sessions != 0 {
		t.Errorf("connected: %+v", st)
	}
}
