package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

	"github.com/o365relay/o365relay/relay/reply"
	"github.com/o365relay/o365relay/token"
)

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
