package smtpd

import (
	"bytes"
	"net"
)

// maxSyntaxErrors is how many syntax errors a connection may make: the
// third is answered and followed by 421 and a close (a client that cannot
// form a command is not going to send a good message; RFC 5321 §4.3.2's
// 421 is how a server closes on its own initiative). go-smtp's own limit is
// one more than this, and counts fewer kinds of error.
const maxSyntaxErrors = 3

// goSMTPReplies maps go-smtp's fixed replies to the ones this relay
// documents. RFC 5321 §3.8: a server that closes the channel on its own
// initiative answers 421; go-smtp closes after too many errors with a 500.
// A command line that is too long is a syntax error (X.5.2, RFC 3463), not a
// "network or routing" one (X.4.0).
// go-smtp answers a panic in a command handler with 421 4.0.0; X.3.0 (RFC
// 3463 "other or undefined mail system status") is what this relay uses for
// its own faults.
var goSMTPReplies = map[string][]byte{
	"500 5.5.1 Too many errors. Quiting now\r\n":      []byte(replyTooManyErrors),
	"500 5.4.0 Too long line, closing connection\r\n": []byte(replyLineTooLong),
	"421 4.0.0 Internal server error\r\n":             []byte(replyInternal),
	// RFC 4954 §6 gives AUTH success the enhanced code 2.7.0.
	"235 2.0.0 Authentication succeeded\r\n": []byte("235 2.7.0 Authentication successful\r\n"),
}

const (
	replyTooManyErrors = "421 4.7.0 Too many errors, closing connection\r\n"
	replyLineTooLong   = "500 5.5.2 Line too long (limit 2000 octets), closing connection\r\n"
	replyInternal      = "421 4.3.0 Internal error, closing connection; try again later\r\n"
)

// goSMTPNoTLS is go-smtp's answer to STARTTLS, which it never handles
// itself here: on a listener without a certificate it is right; once TLS
// is on, this relay says so instead (RFC 3207 §4.2: STARTTLS is not
// offered again).
var goSMTPNoTLS = []byte("502 5.5.1 TLS not supported\r\n")

// goSMTPBadParam starts go-smtp's reply to a MAIL or RCPT parameter it does
// not know or cannot parse (it uses 500 5.5.4 for nothing else).
var goSMTPBadParam = []byte("500 5.5.4 ")

// goSMTPChunking is the EHLO line advertising CHUNKING (RFC 3030), which
// go-smtp always sends. BDAT is refused (command; session.Data as a
// fallback): go-smtp runs Session.Data for BDAT on a second goroutine,
// concurrently with the connection's own, which this package's
// per-connection state does not allow, and that goroutine asks for the
// session after go-smtp's Close may have cleared it (a nil dereference
// FuzzSessionSTARTTLS found: "BDAT 5" and the end of input). It is never
// the last EHLO line (SMTPUTF8 and SIZE follow it), so STARTTLS, when
// offered, takes its place.
var goSMTPChunking = []byte("250-CHUNKING\r\n")

// Write passes go-smtp's replies on, rewriting the few this relay words
// differently (see goSMTPReplies), counting syntax errors, and honouring
// closeAfterReply.
func (c *trackedConn) Write(p []byte) (n int, err error) {
	defer func() {
		if v := recover(); v != nil {
			logPanic(c.log, v, c.ip, "writing to the client")
			c.writeAndClose(replyInternal)
			n, err = 0, net.ErrClosed
		}
	}()
	switch c.closing.Load() {
	case connClosed:
		return len(p), nil
	case connCloseAfterReply:
		defer c.closing.Store(connClosed)
	}
	if err := c.handshakeImplicit(); err != nil {
		return 0, err
	}
	// go-smtp writes nothing while it reads a message: the first write
	// after DATA started is the reply to it.
	c.data = nil
	out := p
	if bytes.HasPrefix(p, []byte("354 ")) {
		c.data = newDataReader(c, 0)
	}
	if c.beginData != nil && bytes.HasPrefix(p, []byte("354 ")) {
		if !c.beginData() {
			// Shutting down: no new message. go-smtp calls Data
			// next, which finds the connection closing.
			out = []byte("421 4.3.2 Service shutting down, try again later\r\n")
			c.closing.Store(connCloseAfterReply)
			defer c.closing.Store(connClosed)
		} else {
			c.dataCounted = true
		}
	}
	switch {
	case bytes.Equal(p, goSMTPChunking):
		if c.starttls == nil || c.tlsConn.Load() != nil {
			return len(p), nil
		}
		out = []byte("250-STARTTLS\r\n")
	case c.sizeLine[0] != nil && bytes.Equal(p, c.sizeLine[0]):
		out = c.sizeLine[1]
	case bytes.Equal(p, goSMTPNoTLS) && c.tlsConn.Load() != nil:
		out = []byte("502 5.5.1 TLS is already on\r\n")
	default:
		if r, ok := goSMTPReplies[string(p)]; ok {
			out = r
		} else if bytes.HasPrefix(p, goSMTPBadParam) {
			// go-smtp answers an unknown or malformed MAIL/RCPT parameter
			// with 500, the code for an unrecognised command; RFC 5321
			// §4.2.2's 501 is "syntax error in parameters or arguments".
			out = append([]byte("501"), p[3:]...)
		}
	}
	w := c.conn()
	if _, err := w.Write(out); err != nil {
		return 0, err
	}
	if c.countSyntaxError(out) {
		if _, err := w.Write([]byte(replyTooManyErrors)); err != nil {
			return 0, err
		}
		c.closing.Store(connClosed)
	}
	return len(p), nil
}

// countSyntaxError reports whether reply is the client's maxSyntaxErrors-th
// syntax error. A syntax error is a 500 or 501 with an X.5.x enhanced code
// (RFC 3463 §3.6: "mail delivery protocol status"): an unknown command, a
// command or argument that does not parse. Not counted: 502/503 (a command
// out of sequence, which a pipelining client legitimately produces after a
// refused MAIL FROM), address and policy refusals, and go-smtp's own
// closing replies.
func (c *trackedConn) countSyntaxError(reply []byte) bool {
	if len(reply) < 9 || reply[3] != ' ' || string(reply) == replyLineTooLong || string(reply) == replyTooManyErrors {
		return false
	}
	if !bytes.HasPrefix(reply, []byte("500 5.5.")) && !bytes.HasPrefix(reply, []byte("501 5.5.")) {
		return false
	}
	c.syntaxErrors++
	return c.syntaxErrors == maxSyntaxErrors
}
