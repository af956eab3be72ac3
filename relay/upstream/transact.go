package upstream

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/reply"
)

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
	if res, txe, reusable = c.mailRcpt(cn, env); txe != nil {
		return res, txe, reusable
	}
	return c.sendData(cn, res, body)
}

// mailFail is a transaction that failed at MAIL, RCPT or the DATA command,
// before any of the body was consumed, so it can be retried whole on
// another connection.
func (c *Client) mailFail(err error, stage reply.Stage) *txError {
	return &txError{err: c.fail(c.classify(err, stage)), beforeData: true}
}

// mailRcpt sends MAIL FROM and one RCPT TO per recipient, one at a time.
// A nil txError means at least one recipient was accepted and res lists
// them; otherwise its results are transact's.
func (c *Client) mailRcpt(cn *conn, env *envelope.Envelope) (res *envelope.Result, txe *txError, reusable bool) {
	// SIZE= (RFC 1870 §5) lets Exchange refuse an oversized message before
	// the body is sent (552 5.3.4).
	if err := cn.smtp.Mail(env.From, &smtp.MailOptions{UTF8: env.SMTPUTF8, Size: env.Size}); err != nil {
		return nil, c.mailFail(err, reply.StageMail), resettable(cn, err)
	}
	countReply(reply.StageMail, 250)
	res = &envelope.Result{Rejected: map[string]*reply.Error{}}
	for _, rcpt := range env.To {
		if err := c.rcptReply(res, rcpt, cn.smtp.Rcpt(rcpt, nil)); err != nil {
			return nil, c.mailFail(err, reply.StageRcpt), false
		}
	}
	if len(res.Accepted) == 0 {
		// Every recipient refused, none with 421 (that returned above).
		pick := pickRefusal(res, env.To)
		return res, &txError{err: pick}, !TokenExpired(pick) && cn.smtp.Reset() == nil
	}
	return res, nil, false
}

// sendData sends DATA, the body and the final dot for the recipients in res,
// and returns Exchange's verdict on the message.
func (c *Client) sendData(cn *conn, res *envelope.Result, body io.Reader) (*envelope.Result, *txError, bool) {
	dc, err := cn.smtp.Data()
	if err != nil {
		return res, c.mailFail(err, reply.StageData), resettable(cn, err)
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

// rcptReply records the reply to one RCPT in res. It returns err when the
// reply ends the whole transaction instead: 421 (service closing, RFC 5321
// §3.8), a broken connection, or a reply out of step (FromSMTP).
func (c *Client) rcptReply(res *envelope.Result, rcpt string, err error) error {
	var se *smtp.SMTPError
	switch {
	case err == nil:
		countReply(reply.StageRcpt, 250)
		res.Accepted = append(res.Accepted, rcpt)
	case errors.As(err, &se) && se.Code != 421 && !outOfStep(se):
		res.Rejected[rcpt] = c.fail(FromSMTP(se, reply.StageRcpt))
	default:
		return err
	}
	return nil
}

// pickRefusal is the reply reported when every recipient was refused: a
// temporary one if there is one, so the caller does not give up on a
// recipient that may work later.
func pickRefusal(res *envelope.Result, to []string) *reply.Error {
	var pick *reply.Error
	for _, rcpt := range to {
		r := res.Rejected[rcpt]
		if pick == nil || (r.Temporary() && !pick.Temporary()) {
			pick = r
		}
	}
	return pick
}
