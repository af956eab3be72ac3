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
//   - Upstream replies are kept exactly (FromSMTP), except a positive
//     reply out of step, which is 451 4.5.0 and retires the session;
//     network, timeout and TLS failures become 451 4.4.x / 4.7.5,
//     temporary.
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
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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

// Deliver sends one message as env.Mailbox. See envelope.Result for how the
// result and the error divide the recipients. Every error is a
// *reply.Error.
func (c *Client) Deliver(ctx context.Context, env *envelope.Envelope, body io.Reader) (*envelope.Result, error) {
	if rerr := checkEnvelope(env); rerr != nil {
		return nil, rerr
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

// checkEnvelope refuses, before any connection, an envelope that cannot
// be sent as it is: the message's own fault, so Deliver fails it rather
// than have it retried.
func checkEnvelope(env *envelope.Envelope) *reply.Error {
	if err := CheckUser(env.Mailbox); err != nil {
		return &reply.Error{Code: 554, Enhanced: reply.EnhancedCode{5, 7, 0}, Stage: reply.StageAuth,
			Text: "invalid sending mailbox name", Err: err}
	}
	if len(env.To) == 0 {
		return reply.New(554, reply.EnhancedCode{5, 5, 1}, "no recipients")
	}
	// What goes after "MAIL FROM:<" and "RCPT TO:<" must be a mailbox in
	// the canonical form package address gives at intake: anything else
	// (a spool written by an older version, a damaged record) could be
	// read by Exchange as another address or a parameter. It is the
	// message's own fault, so it fails rather than being retried.
	if env.From != "" && !canonical(env.From, env.SMTPUTF8) {
		return reply.New(553, reply.EnhancedCode{5, 1, 7}, "queued sender address is not an RFC 5321 mailbox in canonical form; not sent")
	}
	for _, to := range env.To {
		if !canonical(to, env.SMTPUTF8) {
			return reply.New(553, reply.EnhancedCode{5, 1, 3}, "queued recipient address is not an RFC 5321 mailbox in canonical form; not sent")
		}
	}
	return nil
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
