package upstream

import (
	"errors"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/reply"
)

// A transaction with a server that offers PIPELINING (RFC 2920; Exchange
// Online does) goes out in two writes instead of one per command and per
// 4 KiB of body: MAIL FROM, every RCPT TO and DATA in one (§3.1: DATA is
// the last command of a group), then, after the 354, the dot-stuffed body
// with the end of data. Each write is one TLS record up to 16 KiB. The
// replies are read in order and mean what they meant one at a time
// (transact): a refused MAIL fails the transaction, a refused RCPT only
// that recipient, a 421 or a broken connection the whole of it. When no
// recipient was accepted, the server's answer to DATA is read too, and if
// it was a 354 anyway, a lone "." ends the empty message (§3.1) before
// RSET. The lines are the ones go-smtp's Mail, Rcpt and Data write.

// maxGroup bounds a group's commands: far below any TCP window, so the
// server's replies can never be held up waiting for the relay to read them
// while the relay is still writing the group (the deadlock RFC 2920 §3.1
// warns of). A larger group (about a hundred recipients and more) goes
// one command at a time.
const maxGroup = 4 << 10

// bodyChunk is how much body is read at a time; flushAt is how much
// stuffed body is held before it is written (a body up to flushAt goes out
// with its end of data in one write).
const (
	bodyChunk = 32 << 10
	flushAt   = 48 << 10
)

// bodyBuffers is what writing one body borrows (Client.pipeBufs).
type bodyBuffers struct{ in, out []byte }

// transactPipelined is transact's body for such a server, with group from
// commandGroup; transact has checked SMTPUTF8 and owns the context's
// cancellation.
func (c *Client) transactPipelined(cn *conn, env *envelope.Envelope, group []byte, body io.Reader) (res *envelope.Result, txe *txError, reusable bool) {
	if cn.replies == nil {
		cn.replies = replyReader(cn.tls)
	}
	r := cn.replies
	// Each reply gets CommandTimeout, as each command did one at a time.
	defer func() { _ = cn.tls.SetDeadline(time.Time{}) }()
	read := func(expect int) (string, error) {
		if err := cn.tls.SetDeadline(time.Now().Add(c.opts.CommandTimeout)); err != nil {
			return "", err
		}
		return readReply(r, expect)
	}
	if err := cn.tls.SetDeadline(time.Now().Add(c.opts.CommandTimeout)); err != nil {
		return nil, c.mailFail(err, reply.StageMail), false
	}
	if _, err := cn.tls.Write(group); err != nil {
		return nil, c.mailFail(err, reply.StageMail), false
	}
	if _, err := read(250); err != nil {
		if !isReply(err) {
			return nil, c.mailFail(err, reply.StageMail), false
		}
		// The RCPTs and the DATA behind it are answered too (503, as a
		// rule): read them before the session can carry another
		// transaction.
		synced := c.endGroup(cn, len(env.To))
		return nil, c.mailFail(err, reply.StageMail), synced && c.resettablePipelined(cn, err)
	}
	countReply(reply.StageMail, 250)
	res = &envelope.Result{Rejected: map[string]*reply.Error{}}
	for _, rcpt := range env.To {
		_, err := read(25)
		if err := c.rcptReply(res, rcpt, err); err != nil {
			return nil, c.mailFail(err, reply.StageRcpt), false
		}
	}
	if len(res.Accepted) == 0 {
		pick := pickRefusal(res, env.To)
		synced := c.endGroup(cn, 0)
		return res, &txError{err: pick}, synced && !TokenExpired(pick) && cn.rset(c.opts.CommandTimeout) == nil && inStep(cn)
	}
	if _, err := read(354); err != nil {
		return res, c.mailFail(err, reply.StageData), isReply(err) && c.resettablePipelined(cn, err)
	}
	txe, reusable = c.pipelinedBody(cn, res, body)
	return res, txe, reusable
}

// pipelinedBody writes the body after the 354 and reads Exchange's verdict
// on the message into res.Reply.
func (c *Client) pipelinedBody(cn *conn, res *envelope.Result, body io.Reader) (txe *txError, reusable bool) {
	if err := cn.tls.SetDeadline(time.Now().Add(c.opts.DataTimeout)); err != nil {
		return &txError{err: c.fail(netError(err, reply.StageData, "connection lost before data"))}, false
	}
	if bodyErr, err := c.writeBody(cn, body); err != nil || bodyErr != nil {
		// Closed without the end of data: Exchange discards an
		// unterminated message (RFC 5321 §4.1.1.4).
		cn.close(false)
		if bodyErr != nil {
			return &txError{err: c.fail(&reply.Error{Code: 451, Enhanced: reply.EnhancedCode{4, 3, 0}, Stage: reply.StageData,
				Text: "message body could not be read; transfer aborted before the end of data", Err: bodyErr})}, false
		}
		return &txError{err: c.fail(c.classify(err, reply.StageData))}, false
	}
	// The wait for the verdict gets its own DataTimeout, as go-smtp's
	// Close gives it: a body that took most of the first one to send must
	// not turn a slow 250 into a retry, and so into a second copy.
	if err := cn.tls.SetDeadline(time.Now().Add(c.opts.DataTimeout)); err != nil {
		return &txError{err: c.fail(netError(err, reply.StageData, "connection lost before the reply to the end of data"))}, false
	}
	msg, err := readReply(cn.replies, 250)
	if err != nil {
		// Exchange's verdict on the message (e.g. 554 5.2.252): the
		// transaction is over and the session is fine.
		return &txError{err: c.fail(c.classify(err, reply.StageData))}, isReply(err) && c.resettablePipelined(cn, err)
	}
	countReply(reply.StageData, 250)
	res.Reply = msg
	return nil, inStep(cn)
}

// inStep says whether nothing is left unread after the last reply the
// relay expected: a server that sent more replies than commands is out of
// step, and its session is not used again (the next transaction would
// read this one's leftovers as its own).
func inStep(cn *conn) bool { return cn.replies.R.Buffered() == 0 }

// commandGroup is MAIL FROM, the RCPTs and DATA, as go-smtp writes them
// (v0.25.1 Client.Mail with MailOptions{UTF8, Size}, Client.Rcpt with no
// options, Client.Data).
func commandGroup(cn *conn, env *envelope.Envelope) ([]byte, error) {
	for _, a := range append([]string{env.From}, env.To...) {
		if strings.ContainsAny(a, "\r\n") {
			return nil, errors.New("smtp: a line must not contain CR or LF")
		}
	}
	b := make([]byte, 0, 64*(len(env.To)+2))
	b = append(append(append(b, "MAIL FROM:<"...), env.From...), '>')
	if ok, _ := cn.smtp.Extension("8BITMIME"); ok {
		b = append(b, " BODY=8BITMIME"...)
	}
	if ok, _ := cn.smtp.Extension("SIZE"); ok && env.Size != 0 {
		b = strconv.AppendInt(append(b, " SIZE="...), env.Size, 10)
	}
	if env.SMTPUTF8 {
		b = append(b, " SMTPUTF8"...)
	}
	b = append(b, "\r\n"...)
	for _, rcpt := range env.To {
		b = append(append(append(b, "RCPT TO:<"...), rcpt...), ">\r\n"...)
	}
	return append(b, "DATA\r\n"...), nil
}

// isReply says whether err is the server's reply (not a broken
// connection, a timeout or a line too long).
func isReply(err error) bool {
	var se *smtp.SMTPError
	return errors.As(err, &se)
}

// endGroup reads the rest of a group after a failure: rcpts replies (any
// code) and the reply to DATA; a 354 there gets a lone "." and its reply.
// It reports whether the session is still in step with the server.
func (c *Client) endGroup(cn *conn, rcpts int) bool {
	r := cn.replies
	for range rcpts {
		if _, err := readReply(r, 25); err != nil && !isReply(err) {
			return false
		}
	}
	_, err := readReply(r, 354)
	var se *smtp.SMTPError
	switch {
	case err == nil:
		if _, err := io.WriteString(cn.tls, ".\r\n"); err != nil {
			return false
		}
		_, err = readReply(r, 250)
		return (err == nil || isReply(err)) && inStep(cn)
	case errors.As(err, &se):
		return se.Code != 421 && !outOfStep(se) && inStep(cn)
	}
	return false
}

// resettablePipelined is resettable for a pipelined session.
func (c *Client) resettablePipelined(cn *conn, err error) bool {
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code == 421 || outOfStep(se) || se.Code == 501 && se.EnhancedCode == (smtp.EnhancedCode{5, 5, 127}) {
		return false
	}
	return cn.rset(c.opts.CommandTimeout) == nil && inStep(cn)
}

// rset sends RSET (RFC 5321 §4.1.1.5) and reads its reply.
func (cn *conn) rset(timeout time.Duration) error {
	if err := cn.tls.SetDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	defer func() { _ = cn.tls.SetDeadline(time.Time{}) }()
	if _, err := io.WriteString(cn.tls, "RSET\r\n"); err != nil {
		return err
	}
	_, err := readReply(cn.replies, 250)
	return err
}

// writeBody writes the body, dot-stuffed, and the end of data: up to
// flushAt octets at a time, the end with the last of the body. bodyErr is
// the body's own read error; err the connection's.
func (c *Client) writeBody(cn *conn, body io.Reader) (bodyErr, err error) {
	bb, _ := c.pipeBufs.Get().(*bodyBuffers)
	if bb == nil {
		// Stuffing at most doubles a chunk (a bare LF becomes CRLF, a
		// line's leading dot is doubled): out never grows.
		bb = &bodyBuffers{in: make([]byte, bodyChunk), out: make([]byte, 0, flushAt+2*bodyChunk+8)}
	}
	defer c.pipeBufs.Put(bb)
	var d dotStuffer
	out := bb.out[:0]
	for {
		n, rerr := body.Read(bb.in)
		out = d.append(out, bb.in[:n])
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return rerr, nil
		}
		if len(out) >= flushAt {
			if _, err := cn.tls.Write(out); err != nil {
				return nil, err
			}
			out = out[:0]
		}
	}
	_, err = cn.tls.Write(d.end(out))
	return nil, err
}
