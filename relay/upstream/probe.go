package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"time"

	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/reply"
	"github.com/o365relay/o365relay/token"
)

// Probe step names, in order.
const (
	StepConnect = "connect" // TCP connect
	StepTLS     = "tls"     // greeting, EHLO, STARTTLS, handshake, verification, EHLO
	StepToken   = "token"   // access token from the token source
	StepAuth    = "auth"    // AUTH XOAUTH2 as the mailbox
	StepSend    = "send"    // MAIL, RCPT, DATA and Exchange's final reply (ProbeSend only)
	StepQuit    = "quit"    // QUIT
)

// ProbeStep is the outcome of one step.
type ProbeStep struct {
	Name     string
	Duration time.Duration
	Err      *reply.Error // nil if the step succeeded
}

// ProbeResult is what Probe learned. Steps holds the steps that ran; the
// last one failed if Probe returned an error.
type ProbeResult struct {
	Addr       string
	ServerName string
	Steps      []ProbeStep

	TLSVersion   string // e.g. "TLS 1.3"
	CipherSuite  string
	PeerSubject  string // leaf certificate; also set when verification failed
	PeerIssuer   string
	PeerNotAfter time.Time
	Verified     bool

	// Result is the transaction's outcome (ProbeSend only); Result.Reply
	// is Exchange's final reply text.
	Result *envelope.Result
}

// Failed returns the failed step, or nil.
func (r *ProbeResult) Failed() *ProbeStep {
	for i := range r.Steps {
		if r.Steps[i].Err != nil {
			return &r.Steps[i]
		}
	}
	return nil
}

// Step returns the step called name, or nil if it did not run.
func (r *ProbeResult) Step(name string) *ProbeStep {
	for i := range r.Steps {
		if r.Steps[i].Name == name {
			return &r.Steps[i]
		}
	}
	return nil
}

// Probe checks, for the setup doctor, that mailbox can authenticate: it
// connects, starts TLS, records the session and certificate, authenticates
// and quits without sending mail. It does not use the pool, and a 535 is
// reported as is (no token refresh), since the doctor wants to see it.
func (c *Client) Probe(ctx context.Context, mailbox string) (*ProbeResult, error) {
	return c.probe(ctx, mailbox, true, nil)
}

// ProbeTLS connects, starts TLS and quits: what the doctor checks about the
// endpoint before any token exists. No credential is sent.
func (c *Client) ProbeTLS(ctx context.Context) (*ProbeResult, error) {
	return c.probe(ctx, "", false, nil)
}

// ProbeSend is Probe followed by one transaction on the same connection
// (`o365relay send`): every step is reported, and a failure is Exchange's
// reply as is (no token refresh, no retry on another connection). A
// rejection at RCPT TO of some recipients is not an error when others were
// accepted; see Result.Rejected.
func (c *Client) ProbeSend(ctx context.Context, env *envelope.Envelope, body io.Reader) (*ProbeResult, error) {
	return c.probe(ctx, env.Mailbox, true, func(cn *conn, res *ProbeResult) *reply.Error {
		r, txe, _ := c.transact(ctx, cn, env, body)
		res.Result = r
		if txe != nil {
			return txe.err
		}
		return nil
	})
}

func (c *Client) probe(ctx context.Context, mailbox string, authenticate bool, send func(*conn, *ProbeResult) *reply.Error) (*ProbeResult, error) {
	res := &ProbeResult{Addr: c.opts.Addr, ServerName: c.opts.ServerName}
	step := func(name string, f func() *reply.Error) *reply.Error {
		start := time.Now()
		err := f()
		res.Steps = append(res.Steps, ProbeStep{Name: name, Duration: time.Since(start), Err: err})
		return err
	}
	var cn *conn
	start := time.Now()
	raw, rerr := c.dial(ctx)
	res.Steps = append(res.Steps, ProbeStep{Name: StepConnect, Duration: time.Since(start), Err: rerr})
	if rerr != nil {
		return res, rerr
	}
	if rerr := step(StepTLS, func() *reply.Error {
		var st *tls.ConnectionState
		var err *reply.Error
		cn, st, err = c.startTLS(ctx, raw)
		if err != nil {
			var cv *tls.CertificateVerificationError
			if errors.As(err, &cv) && len(cv.UnverifiedCertificates) > 0 {
				res.setPeer(cv.UnverifiedCertificates[0])
			}
			return err
		}
		res.Verified = true
		res.TLSVersion = tls.VersionName(st.Version)
		res.CipherSuite = tls.CipherSuiteName(st.CipherSuite)
		if len(st.PeerCertificates) > 0 {
			res.setPeer(st.PeerCertificates[0])
		}
		return nil
	}); rerr != nil {
		return res, rerr
	}
	defer cn.close(false) // no-op after a successful QUIT
	if authenticate {
		var tok token.Token
		if rerr := step(StepToken, func() *reply.Error {
			var err *reply.Error
			tok, err = c.getToken(ctx)
			return err
		}); rerr != nil {
			return res, rerr
		}
		if rerr := step(StepAuth, func() *reply.Error {
			if err := CheckUser(mailbox); err != nil {
				return &reply.Error{Code: 554, Enhanced: [3]int{5, 7, 0}, Stage: reply.StageAuth, Text: "invalid mailbox name", Err: err}
			}
			return c.auth(ctx, cn, mailbox, tok)
		}); rerr != nil {
			return res, rerr
		}
	}
	if send != nil {
		if rerr := step(StepSend, func() *reply.Error { return send(cn, res) }); rerr != nil {
			return res, rerr
		}
	}
	if rerr := step(StepQuit, func() *reply.Error {
		if err := cn.smtp.Quit(); err != nil {
			return c.classify(err, reply.StageConnect)
		}
		cn.once.Do(func() { c.open.Add(-1); connectionsOpen.Dec() })
		return nil
	}); rerr != nil {
		return res, rerr
	}
	return res, nil
}

func (r *ProbeResult) setPeer(cert *x509.Certificate) {
	r.PeerSubject = cert.Subject.String()
	r.PeerIssuer = cert.Issuer.String()
	r.PeerNotAfter = cert.NotAfter
}
