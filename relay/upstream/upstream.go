// Package upstream owns the conversation with Exchange Online: the SMTP
// client submission session on smtp.office365.com:587 (STARTTLS, AUTH
// XOAUTH2 with an Entra ID access token, MAIL/RCPT/DATA), the mapping of
// every failure to a *reply.Error with the stage it happened at, and a
// per-mailbox pool of authenticated connections.
//
// Rules this package enforces (docs/exchange.md: TLS, XOAUTH2, Replies,
// Limits, go-smtp quirks):
//   - The token is only ever sent on a connection whose TLS handshake
//     completed and verified the server (checked on the TLS connection
//     right before AUTH). A server that does not offer STARTTLS gets
//     nothing secret; the error carries StageTLS, and like every failure
//     before MAIL FROM (a stage of token, connect, tls or auth) the
//     delivery scheduler treats it as the path's, not the message's: the
//     mailbox is held and its mail stays queued.
//   - Greeting, EHLO, STARTTLS and the handshake (which verifies the
//     certificate, docs/exchange.md#client-side) are done here
//     (starttls.go); go-smtp speaks EHLO,
//     AUTH and QUIT over the TLS connection. With PIPELINING offered, a
//     transaction's commands go in one write and its body in another
//     (pipelining.go); each reply keeps its meaning.
//   - A 535 at AUTH gets one token refresh and one new connection; a second
//     535 is returned (5.7.3 is permanent for that token,
//     docs/exchange.md#535-573-authentication-unsuccessful).
//   - Upstream replies are kept exactly (FromSMTP); network, timeout
//     and TLS failures become 451 4.4.x / 4.7.5, temporary.
//   - The body is streamed. If reading it fails the connection is closed
//     without the final dot, so Exchange never accepts a truncated message.
//   - Authenticated connections are reused and retired before Exchange's
//     ~5 min idle timeout, their age limit and their token's expiry. How
//     many run at once per mailbox is the caller's to limit (the delivery
//     scheduler owns that number and its reaction to a 432 4.3.2 at AUTH,
//     which Deliver reports as it is: ConcurrencyLimited).
//   - A 501 5.5.127 on an authenticated session (read as "this session's
//     token expired") closes it and the idle ones with the same token,
//     refreshes the token and retries on a fresh connection, once.
//   - A pooled connection that fails before any of the body was sent (421,
//     a drop while idle) is replaced and the transaction retried, once.
package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

	"github.com/o365relay/o365relay/config/address"
	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/reply"
	"github.com/o365relay/o365relay/token"
)

// DefaultAddr is Exchange Online's client submission endpoint.
const DefaultAddr = "smtp.office365.com:587"

// Options configures a Client. Zero values take the documented defaults.
type Options struct {
	// Addr is host:port; default DefaultAddr.
	Addr string
	// ServerName is the name the certificate must match; default the host
	// of Addr.
	ServerName string
	// RootCAs verifies the server; nil means the system roots (which honour
	// SSL_CERT_FILE).
	RootCAs *x509.CertPool
	// Tokens supplies access tokens. Required.
	Tokens token.Source
	// HelloName is the EHLO name, before and after STARTTLS; default
	// "localhost".
	HelloName string
	// Dial opens the TCP connection; default a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// ConnectTimeout bounds the TCP connect; default 30 s.
	ConnectTimeout time.Duration
	// CommandTimeout bounds each command's reply, including the TLS
	// handshake; default 2 min.
	CommandTimeout time.Duration
	// DataTimeout bounds streaming the body, and separately the wait for
	// the final reply; default 10 min (RFC 5321 §4.5.3.2.6 gives the
	// server 10 min after the dot).
	DataTimeout time.Duration
	// Clock is used for connection age, idleness and token expiry; default
	// time.Now. Network deadlines use the real clock.
	Clock func() time.Time
	// Logger; nil discards. Tokens and bodies are never logged.
	Logger *zap.Logger

	// IdleTimeout closes pooled connections idle this long; default 2 min
	// (Exchange connectors time out at ~5 min).
	IdleTimeout time.Duration
	// MaxConnAge retires pooled connections; default 8 min (Exchange
	// receive connectors' ConnectionTimeout is 10 min).
	MaxConnAge time.Duration
	// PoolDisabled makes every Deliver use a new connection and QUIT it.
	PoolDisabled bool
}

// tokenMargin: a pooled connection is retired when the token it
// authenticated with expires within this margin. Whether Exchange drops an
// authenticated session at token expiry is not documented; not finding out
// in production is cheap.
const tokenMargin = 2 * time.Minute

// Client delivers messages to Exchange Online. It is safe for concurrent
// use. Close it to close pooled connections and stop its janitor.
type Client struct {
	opts Options
	host string
	log  *zap.Logger

	mu     sync.Mutex
	pools  map[string]*mailboxPool
	closed bool

	stop    chan struct{}
	janitor sync.WaitGroup

	dials, handshakes, auths, open atomic.Int64

	// bodyBufs lends the buffer a body is copied to Exchange through
	// (io.Copy would allocate 32 KiB per message); pipeBufs the buffers
	// of a pipelined transaction's body (pipelining.go).
	bodyBufs, pipeBufs sync.Pool
}

// Stats counts connection work since New.
type Stats struct {
	Dials      int // TCP connections opened
	Handshakes int // TLS sessions established and verified
	Auths      int // successful AUTH XOAUTH2
	Open       int // connections open now
}

// New checks opts and returns a Client. With the pool enabled it starts a
// janitor goroutine that Close stops.
func New(opts Options) (*Client, error) {
	if opts.Tokens == nil {
		return nil, errors.New("upstream: Options.Tokens is required")
	}
	if opts.Addr == "" {
		opts.Addr = DefaultAddr
	}
	host, _, err := net.SplitHostPort(opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("upstream: Options.Addr %q: %w", opts.Addr, err)
	}
	if opts.ServerName == "" {
		opts.ServerName = host
	}
	if opts.HelloName == "" {
		opts.HelloName = "localhost"
	}
	if strings.ContainsAny(opts.HelloName, "\r\n ") {
		return nil, fmt.Errorf("upstream: Options.HelloName %q is not a host name", opts.HelloName)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&opts.ConnectTimeout, 30*time.Second)
	def(&opts.CommandTimeout, 2*time.Minute)
	def(&opts.DataTimeout, 10*time.Minute)
	def(&opts.IdleTimeout, 2*time.Minute)
	def(&opts.MaxConnAge, 8*time.Minute)
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Dial == nil {
		d := &net.Dialer{Timeout: opts.ConnectTimeout}
		opts.Dial = d.DialContext
	}
	c := &Client{
		opts:  opts,
		host:  opts.ServerName,
		log:   opts.Logger,
		pools: make(map[string]*mailboxPool),
		stop:  make(chan struct{}),
	}
	if !opts.PoolDisabled {
		c.janitor.Add(1)
		go c.runJanitor()
	}
	return c, nil
}

// Stats returns the connection counters.
func (c *Client) Stats() Stats {
	return Stats{
		Dials:      int(c.dials.Load()),
		Handshakes: int(c.handshakes.Load()),
		Auths:      int(c.auths.Load()),
		Open:       int(c.open.Load()),
	}
}

// conn is one SMTP session with Exchange.
type conn struct {
	cl       *Client
	smtp     *smtp.Client
	raw      net.Conn
	tls      *tls.Conn         // the session (go-smtp speaks over it too)
	replies  *textproto.Reader // replies to pipelined transactions (pipelining.go)
	mailbox  string
	tok      token.Token
	created  time.Time
	lastUsed time.Time
	authed   bool
	once     sync.Once
	pool     *mailboxPool // set once the session is authenticated for it
}

// close ends the session: QUIT first when graceful (a healthy connection),
// so Exchange releases the mailbox's connection slot promptly.
func (cn *conn) close(graceful bool) {
	cn.once.Do(func() {
		defer func() {
			cn.cl.open.Add(-1)
			connectionsOpen.Dec()
		}()
		if graceful {
			if err := cn.smtp.Quit(); err == nil {
				return
			} else {
				cn.cl.log.Debug("upstream QUIT failed", zap.String("mailbox", cn.mailbox), zap.Error(err))
			}
		}
		if err := cn.smtp.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			cn.cl.log.Debug("upstream close", zap.String("mailbox", cn.mailbox), zap.Error(err))
		}
	})
}

// dial opens a TCP connection.
func (c *Client) dial(ctx context.Context) (net.Conn, *reply.Error) {
	dctx, cancel := context.WithTimeout(ctx, c.opts.ConnectTimeout)
	defer cancel()
	raw, err := c.opts.Dial(dctx, "tcp", c.opts.Addr)
	if err != nil {
		return nil, c.fail(netError(err, reply.StageConnect, fmt.Sprintf("cannot connect to %s", c.opts.Addr)))
	}
	c.dials.Add(1)
	dialsTotal.Inc()
	return raw, nil
}

// startTLS runs greeting, EHLO, STARTTLS, the TLS handshake and the second
// EHLO, and checks the result. The returned connection is open and counted.
func (c *Client) startTLS(ctx context.Context, raw net.Conn) (*conn, *tls.ConnectionState, *reply.Error) {
	start := time.Now()
	stop := context.AfterFunc(ctx, func() { _ = raw.Close() }) // unblocks I/O; Close error irrelevant
	defer stop()
	// Full-size TLS records from the first: dynamic record sizing (small
	// records while a connection is new) helps a browser render early,
	// and only costs a mail session records and writes.
	cfg := &tls.Config{ServerName: c.opts.ServerName, RootCAs: c.opts.RootCAs, MinVersion: tls.VersionTLS12,
		DynamicRecordSizingDisabled: true}
	if err := raw.SetDeadline(time.Now().Add(c.opts.CommandTimeout)); err != nil {
		c.closeRaw(raw)
		return nil, nil, c.fail(netError(err, reply.StageConnect, "connection setup failed"))
	}
	tc, sentSTARTTLS, err := plainToTLS(raw, cfg, c.opts.HelloName)
	if err != nil {
		c.closeRaw(raw)
		if ctx.Err() != nil {
			return nil, nil, c.fail(ctxError(ctx, stageOf(sentSTARTTLS)))
		}
		if errors.Is(err, errNoSTARTTLSOffered) {
			return nil, nil, c.fail(&reply.Error{Code: 554, Enhanced: reply.EnhancedCode{5, 7, 10}, Stage: reply.StageTLS,
				Text: fmt.Sprintf("%s does not offer STARTTLS; refusing to send credentials without TLS (check the upstream address)", c.opts.Addr)})
		}
		return nil, nil, c.fail(c.classify(err, stageOf(sentSTARTTLS)))
	}
	// go-smtp reads a greeting first on a new client; the server's came
	// before STARTTLS.
	sc := smtp.NewClient(&tlsSession{Conn: tc, greeting: []byte("220 " + c.host + " TLS on\r\n")})
	cn := &conn{cl: c, smtp: sc, raw: raw, tls: tc, created: c.opts.Clock()}
	c.open.Add(1)
	connectionsOpen.Inc()
	sc.CommandTimeout = c.opts.CommandTimeout
	sc.SubmissionTimeout = c.opts.DataTimeout
	if err := sc.Hello(c.opts.HelloName); err != nil {
		cn.close(false)
		if ctx.Err() != nil {
			return nil, nil, c.fail(ctxError(ctx, reply.StageTLS))
		}
		return nil, nil, c.fail(c.classify(err, reply.StageTLS))
	}
	st := tc.ConnectionState()
	if !st.HandshakeComplete || st.Version < tls.VersionTLS12 {
		cn.close(false)
		return nil, nil, c.fail(&reply.Error{Code: 451, Enhanced: reply.EnhancedCode{4, 7, 5}, Stage: reply.StageTLS,
			Text: fmt.Sprintf("TLS session with %s not established", c.host)})
	}
	c.handshakes.Add(1)
	handshakeSeconds.Observe(time.Since(start).Seconds())
	return cn, &st, nil
}

func (c *Client) closeRaw(raw net.Conn) {
	if err := raw.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		c.log.Debug("upstream close", zap.Error(err))
	}
}

// auth runs AUTH XOAUTH2 on a verified TLS session.
func (c *Client) auth(ctx context.Context, cn *conn, mailbox string, tok token.Token) *reply.Error {
	// Never put a token on a connection that is not TLS, whatever
	// happened before (docs/exchange.md#tls; RFC 4954 §4 leaves it to the client).
	if cn.tls == nil || !cn.tls.ConnectionState().HandshakeComplete {
		return c.fail(&reply.Error{Code: 451, Enhanced: reply.EnhancedCode{4, 7, 5}, Stage: reply.StageTLS,
			Text: "refusing to authenticate on a connection without TLS"})
	}
	if ok, _ := cn.smtp.Extension("AUTH"); !ok || !cn.smtp.SupportsAuth(Mechanism) {
		return c.fail(&reply.Error{Code: 554, Enhanced: reply.EnhancedCode{5, 7, 4}, Stage: reply.StageAuth,
			Text: fmt.Sprintf("%s does not offer AUTH XOAUTH2", c.opts.Addr)})
	}
	stop := context.AfterFunc(ctx, func() { _ = cn.raw.Close() })
	defer stop()
	start := time.Now()
	err := cn.smtp.Auth(NewXOAuth2(mailbox, tok.Value))
	authSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		if ctx.Err() != nil {
			return c.fail(ctxError(ctx, reply.StageAuth))
		}
		if errors.Is(err, ErrBadUser) || errors.Is(err, errBadToken) {
			return c.fail(&reply.Error{Code: 554, Enhanced: reply.EnhancedCode{5, 7, 0}, Stage: reply.StageAuth, Text: err.Error()})
		}
		return c.fail(c.classify(err, reply.StageAuth))
	}
	countReply(reply.StageAuth, 235)
	cn.mailbox, cn.tok, cn.authed = mailbox, tok, true
	c.auths.Add(1)
	return nil
}

// getToken asks the token source; a failure becomes a 451 4.7.0 reply
// (tokenError).
func (c *Client) getToken(ctx context.Context) (token.Token, *reply.Error) {
	tok, err := c.opts.Tokens.Token(ctx)
	if err != nil {
		return token.Token{}, tokenError(err)
	}
	return tok, nil
}

// connect opens an authenticated session for mailbox. A 535 gets one token
// refresh and one more attempt on a fresh connection
// (docs/exchange.md#535-573-authentication-unsuccessful:
// 5.7.3 is permanent for that token).
func (c *Client) connect(ctx context.Context, mailbox string) (*conn, *reply.Error) {
	tok, rerr := c.getToken(ctx)
	if rerr != nil {
		return nil, rerr
	}
	for attempt := 0; ; attempt++ {
		raw, rerr := c.dial(ctx)
		if rerr != nil {
			return nil, rerr
		}
		cn, _, rerr := c.startTLS(ctx, raw)
		if rerr != nil {
			return nil, rerr
		}
		rerr = c.auth(ctx, cn, mailbox, tok)
		if rerr == nil {
			return cn, nil
		}
		cn.close(false)
		if rerr.Code != 535 || attempt > 0 {
			if rerr.Code == 535 {
				// A fresh token refused too: a setup problem, not
				// an expired token. Same hint as `o365relay doctor`.
				c.log.Warn("Exchange refused AUTH with a fresh token", zap.String("mailbox", mailbox),
					zap.String("reply", rerr.Error()), zap.String("hint", AuthHint(rerr)))
			}
			return nil, rerr
		}
		c.log.Info("Exchange rejected the access token; refreshing once", zap.String("mailbox", mailbox),
			zap.String("reply", rerr.Error()), zap.String("hint", AuthHint(rerr)))
		tok2, err := c.opts.Tokens.Refresh(ctx, tok)
		if err != nil {
			return nil, tokenError(err)
		}
		tok = tok2
	}
}

// fail counts a failure reply and returns it.
func (c *Client) fail(e *reply.Error) *reply.Error {
	countReply(e.Stage, e.Code)
	return e
}

// classify maps any error from go-smtp or the network to a *reply.Error.
func (c *Client) classify(err error, stage reply.Stage) *reply.Error {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return FromSMTP(se, stage)
	}
	if re := tlsVerifyError(err, c.host, stage); re != nil {
		return re
	}
	var alert tls.AlertError
	var rh tls.RecordHeaderError
	if errors.As(err, &alert) || errors.As(err, &rh) {
		return &reply.Error{Code: 451, Enhanced: reply.EnhancedCode{4, 7, 5}, Stage: stage,
			Text: fmt.Sprintf("TLS handshake with %s failed", c.host), Err: err}
	}
	return netError(err, stage, fmt.Sprintf("connection to %s failed", c.opts.Addr))
}

// tlsVerifyError explains a certificate verification failure. It is
// temporary: it may be an interception (MITM) that goes away, or a CA
// change that an update of the trust store fixes; the text says which host
// and why so an operator can tell.
func tlsVerifyError(err error, host string, stage reply.Stage) *reply.Error {
	var why string
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	var ci x509.CertificateInvalidError
	var cv *tls.CertificateVerificationError
	switch {
	case errors.As(err, &ua):
		why = "signed by an unknown authority"
	case errors.As(err, &he):
		why = "not valid for this host name"
	case errors.As(err, &ci):
		why = "invalid (" + ci.Error() + ")"
	case errors.As(err, &cv):
		why = "verification failed"
	default:
		return nil
	}
	return &reply.Error{Code: 451, Enhanced: reply.EnhancedCode{4, 7, 5}, Stage: reply.StageTLS,
		Text: fmt.Sprintf("TLS certificate of %s not trusted: %s", host, why), Err: err}
}

// netError maps network failures: RFC 3463 X.4.1 "no answer from host"
// for connect failures and timeouts, X.4.2 "bad connection" otherwise.
func netError(err error, stage reply.Stage, text string) *reply.Error {
	enh := reply.EnhancedCode{4, 4, 2}
	var ne net.Error
	if stage == reply.StageConnect || (errors.As(err, &ne) && ne.Timeout()) {
		enh = reply.EnhancedCode{4, 4, 1}
	}
	if errors.As(err, &ne) && ne.Timeout() {
		text += " (timeout)"
	}
	return &reply.Error{Code: 451, Enhanced: enh, Stage: stage, Text: text, Err: err}
}

func ctxError(ctx context.Context, stage reply.Stage) *reply.Error {
	return &reply.Error{Code: 451, Enhanced: reply.EnhancedCode{4, 4, 1}, Stage: stage,
		Text: "delivery attempt cancelled or timed out", Err: context.Cause(ctx)}
}

// bodyReader remembers the body's own read error, to tell it from a write
// error on the connection.
type bodyReader struct {
	r   io.Reader
	err error
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}

// txError is a failed transaction. beforeData is true when nothing of the
// body was consumed, so the whole transaction can be retried on another
// connection.
type txError struct {
	err        *reply.Error
	beforeData bool
}

// transact runs MAIL, RCPT, DATA on an authenticated session. reusable
// reports whether the session may carry another transaction.
func (c *Client) transact(ctx context.Context, cn *conn, env *envelope.Envelope, body io.Reader) (res *envelope.Result, txe *txError, reusable bool) {
	stop := context.AfterFunc(ctx, func() { _ = cn.raw.Close() })
	defer func() {
		if !stop() {
			// The context ended while we were using the connection.
			reusable = false
			// A network error caused by our own close says nothing about
			// Exchange: report the cancellation instead.
			if txe != nil && txe.err.Code == 451 && txe.err.Enhanced[1] == 4 {
				txe.err = ctxError(ctx, txe.err.Stage)
				txe.beforeData = false
			}
		}
	}()
	mailFail := func(err error, stage reply.Stage) *txError {
		return &txError{err: c.fail(c.classify(err, stage)), beforeData: true}
	}
	// A reply other than 421 comes from a live session: after RSET it can
	// carry the next message, so a run of deferrals (451 at MAIL, 452 at
	// RCPT) does not cost a TLS handshake and AUTH each.
	if ok, _ := cn.smtp.Extension("SMTPUTF8"); env.SMTPUTF8 && !ok {
		// RFC 6531 §3.4: without the extension the message cannot be
		// relayed; retrying will not help.
		return nil, &txError{err: c.fail(&reply.Error{Code: 554, Enhanced: reply.EnhancedCode{5, 6, 7}, Stage: reply.StageMail,
			Text: "upstream does not support SMTPUTF8; internationalized addresses cannot be relayed"})}, false
	}
	if ok, _ := cn.smtp.Extension("PIPELINING"); ok && cn.tls != nil {
		if group, err := commandGroup(cn, env); err == nil && len(group) <= maxGroup {
			return c.transactPipelined(cn, env, group, body)
		}
	}
	// SIZE= (RFC 1870 §5) lets Exchange refuse an oversized message before
	// the body is sent (552 5.3.4).
	if err := cn.smtp.Mail(env.From, &smtp.MailOptions{UTF8: env.SMTPUTF8, Size: env.Size}); err != nil {
		return nil, mailFail(err, reply.StageMail), resettable(cn, err)
	}
	countReply(reply.StageMail, 250)
	res = &envelope.Result{Rejected: map[string]*reply.Error{}}
	for _, rcpt := range env.To {
		err := cn.smtp.Rcpt(rcpt, nil)
		var se *smtp.SMTPError
		switch {
		case err == nil:
			countReply(reply.StageRcpt, 250)
			res.Accepted = append(res.Accepted, rcpt)
		case errors.As(err, &se) && se.Code != 421 && !outOfStep(se):
			res.Rejected[rcpt] = c.fail(FromSMTP(se, reply.StageRcpt))
		default:
			// 421 (service closing, RFC 5321 §3.8) or a broken connection:
			// the transaction as a whole failed.
			return nil, mailFail(err, reply.StageRcpt), false
		}
	}
	if len(res.Accepted) == 0 {
		// Report a temporary rejection if there is one, so the caller does
		// not give up on a recipient that may work later.
		var pick *reply.Error
		for _, rcpt := range env.To {
			r := res.Rejected[rcpt]
			if pick == nil || (r.Temporary() && !pick.Temporary()) {
				pick = r
			}
		}
		// Every recipient refused, none with 421 (that returned above).
		return res, &txError{err: pick}, !TokenExpired(pick) && cn.smtp.Reset() == nil
	}
	dc, err := cn.smtp.Data()
	if err != nil {
		return res, mailFail(err, reply.StageData), resettable(cn, err)
	}
	if err := cn.raw.SetDeadline(time.Now().Add(c.opts.DataTimeout)); err != nil {
		return res, &txError{err: c.fail(netError(err, reply.StageData, "connection lost before data"))}, false
	}
	br := &bodyReader{r: body}
	if err := c.copyBody(dc, br); err != nil {
		// Close without the final dot: Exchange discards an unterminated
		// message (RFC 5321 §4.1.1.4 — only "<CRLF>.<CRLF>" completes it).
		cn.close(false)
		if br.err != nil {
			return res, &txError{err: c.fail(&reply.Error{Code: 451, Enhanced: reply.EnhancedCode{4, 3, 0}, Stage: reply.StageData,
				Text: "message body could not be read; transfer aborted before the end of data", Err: br.err})}, false
		}
		return res, &txError{err: c.fail(c.classify(err, reply.StageData))}, false
	}
	resp, err := dc.CloseWithResponse()
	if err != nil {
		// Exchange's verdict on the message (e.g. 554 5.2.252): the
		// transaction is over and the session is fine.
		return res, &txError{err: c.fail(c.classify(err, reply.StageData))}, resettable(cn, err)
	}
	countReply(reply.StageData, 250)
	res.Reply = resp.StatusText
	return res, nil, true
}

// copyBody copies a message body to the DATA writer through a pooled
// buffer.
func (c *Client) copyBody(dst io.Writer, src io.Reader) error {
	bp, _ := c.bodyBufs.Get().(*[]byte)
	if bp == nil {
		b := make([]byte, 32<<10)
		bp = &b
	}
	defer c.bodyBufs.Put(bp)
	_, err := io.CopyBuffer(dst, src, *bp)
	return err
}

// resettable reports whether a session whose command just failed with err
// (as go-smtp returned it) can carry another transaction: err must be an
// SMTP reply, not a network error; not 421 (the server is closing, RFC 5321
// §3.8); not 501 5.5.127 (the session's token expired); not a positive
// reply out of step (FromSMTP); and RSET (§4.1.1.5) must be answered 250.
func resettable(cn *conn, err error) bool {
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code == 421 || outOfStep(se) || se.Code == 501 && se.EnhancedCode == (smtp.EnhancedCode{5, 5, 127}) {
		return false
	}
	return cn.smtp.Reset() == nil
}

// Deliver sends one message as env.Mailbox. See envelope.Result for how the
// result and the error divide the recipients. Every error is a
// *reply.Error.
func (c *Client) Deliver(ctx context.Context, env *envelope.Envelope, body io.Reader) (*envelope.Result, error) {
	if err := CheckUser(env.Mailbox); err != nil {
		return nil, &reply.Error{Code: 554, Enhanced: reply.EnhancedCode{5, 7, 0}, Stage: reply.StageAuth,
			Text: "invalid sending mailbox name", Err: err}
	}
	if len(env.To) == 0 {
		return nil, reply.New(554, reply.EnhancedCode{5, 5, 1}, "no recipients")
	}
	// What goes after "MAIL FROM:<" and "RCPT TO:<" must be a mailbox in
	// the canonical form package address gives at intake: anything else
	// (a spool written by an older version, a damaged record) could be
	// read by Exchange as another address or a parameter. It is the
	// message's own fault, so it fails rather than being retried.
	if env.From != "" && !canonical(env.From, env.SMTPUTF8) {
		return nil, reply.New(553, reply.EnhancedCode{5, 1, 7}, "queued sender address is not an RFC 5321 mailbox in canonical form; not sent")
	}
	for _, to := range env.To {
		if !canonical(to, env.SMTPUTF8) {
			return nil, reply.New(553, reply.EnhancedCode{5, 1, 3}, "queued recipient address is not an RFC 5321 mailbox in canonical form; not sent")
		}
	}
	p, rerr := c.pool(env.Mailbox)
	if rerr != nil {
		return nil, rerr
	}

	// Each recovery below happens at most once per message; after that
	// the failure is reported and the scheduler's policy applies.
	var staleRetries, tokenRetries int
	fresh := false // the next connection must be a new one
	for {
		var cn *conn
		reused := false
		if !fresh {
			cn, reused = p.takeIdle(c.opts.Clock())
		}
		if cn == nil {
			var rerr *reply.Error
			if cn, rerr = c.connect(ctx, env.Mailbox); rerr != nil {
				if ConcurrencyLimited(rerr) {
					reconnectsTotal.WithLabelValues("432").Inc()
				}
				return nil, rerr
			}
			p.adopt(cn)
		}
		res, txe, reusable := c.transact(ctx, cn, env, body)
		if txe == nil {
			cn.lastUsed = c.opts.Clock()
			if reusable && !c.opts.PoolDisabled {
				p.putIdle(cn)
			} else {
				cn.close(reusable)
			}
			return res, nil
		}
		if reusable && !c.opts.PoolDisabled {
			cn.lastUsed = c.opts.Clock()
			p.putIdle(cn)
		} else {
			cn.close(false)
		}
		if TokenExpired(txe.err) {
			// The session's token ran out under us. Other pooled
			// sessions authenticated with it are as dead; the source is
			// told so it hands out a new token, and a transaction that
			// sent nothing of the body is retried at once.
			c.log.Info("Exchange says the session's token expired; reconnecting with a fresh token",
				zap.String("mailbox", env.Mailbox), zap.String("reply", txe.err.Error()))
			reconnectsTotal.WithLabelValues("token_expired").Inc()
			p.dropIdleWith(cn.tok)
			if _, err := c.opts.Tokens.Refresh(ctx, cn.tok); err != nil {
				return res, tokenError(err)
			}
			if txe.beforeData && tokenRetries == 0 {
				tokenRetries++
				fresh = true
				continue
			}
			return res, txe.err
		}
		if reused && !reusable && staleRetries == 0 && txe.beforeData && txe.err.Temporary() {
			// A pooled connection Exchange had closed or was closing (idle
			// timeout, 421): nothing of the message was sent, so retry once
			// on a fresh connection instead of failing the message. Other
			// idle ones are likely as stale as this one.
			c.log.Debug("pooled connection failed before data; retrying on a new one",
				zap.String("mailbox", env.Mailbox), zap.String("reply", txe.err.Error()))
			reconnectsTotal.WithLabelValues("stale").Inc()
			staleRetries++
			fresh = true
			continue
		}
		return res, txe.err
	}
}

// canonical reports whether s is a mailbox as address.Parse writes it.
func canonical(s string, smtputf8 bool) bool {
	m, err := address.Parse(s, smtputf8)
	return err == nil && m.String() == s
}

// ConcurrencyLimited reports Exchange's "432 4.3.2 Concurrent connections
// limit exceeded" at AUTH on a new connection
// (docs/exchange.md#432-432-concurrent-connections,
// #connections-per-mailbox): more connections for the mailbox than Exchange
// grants right now.
func ConcurrencyLimited(re *reply.Error) bool {
	return re.Stage == reply.StageAuth && re.Temporary() && re.Enhanced == reply.EnhancedCode{4, 3, 2}
}

// TokenExpired reports Exchange's "501 5.5.127" on an authenticated
// session, which the relay reads as "the access token this session
// authenticated with is no longer valid" (the reply is reported by users of
// long-lived sessions; Microsoft does not document it). It is neither the
// message's fault nor a configuration error: a fresh connection with a fresh
// token fixes it.
func TokenExpired(re *reply.Error) bool {
	return re != nil && re.Code == 501 && re.Enhanced == reply.EnhancedCode{5, 5, 127}
}

// dropIdleWith closes idle connections authenticated with tok.
func (p *mailboxPool) dropIdleWith(tok token.Token) {
	var drop []*conn
	p.cl.mu.Lock()
	keep := p.idle[:0]
	for _, cn := range p.idle {
		if cn.tok.Value == tok.Value {
			drop = append(drop, cn)
		} else {
			keep = append(keep, cn)
		}
	}
	clear(p.idle[len(keep):])
	p.idle = keep
	p.cl.mu.Unlock()
	for _, cn := range drop {
		cn.close(true)
	}
}
