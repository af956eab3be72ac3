package upstream

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/o365relay/o365relay/relay/reply"
)

// The plaintext part of a session (greeting, EHLO, STARTTLS) and the TLS
// handshake are done here rather than by go-smtp's NewClientStartTLS,
// which keeps the TLS connection to itself: with it in hand, a
// transaction can be written the way pipelining.go does (commands in one
// TLS record, the body in as few as fit). go-smtp then speaks
// everything after the handshake (EHLO, AUTH, QUIT, and transactions with a
// server that does not offer PIPELINING), over tlsSession.
//
// The steps, replies and errors are go-smtp's (v0.25.1 client.go:
// greet, hello with its HELO fallback, startTLS), so failures are
// classified as before.

// errNoSTARTTLSOffered: the EHLO reply lacks STARTTLS (see startTLS).
var errNoSTARTTLSOffered = errors.New("upstream: EHLO does not offer STARTTLS")

// maxReplyLine is go-smtp's limit on a reply line (RFC 5321 §4.5.3.1.5's
// 512, doubled).
const maxReplyLine = 2000

// lineLimitReader fails a line longer than maxReplyLine, as go-smtp's own
// reader does (smtp.ErrTooLongLine), so a server cannot make the relay
// buffer an endless line.
type lineLimitReader struct {
	r    io.Reader
	line int // octets since the last LF
}

func (l *lineLimitReader) Read(p []byte) (int, error) {
	if l.line > maxReplyLine {
		return 0, smtp.ErrTooLongLine
	}
	n, err := l.r.Read(p)
	b := p[:n]
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			l.line += len(b)
			break
		}
		if l.line+i+1 > maxReplyLine {
			return 0, smtp.ErrTooLongLine
		}
		l.line, b = 0, b[i+1:]
	}
	if l.line > maxReplyLine {
		return 0, smtp.ErrTooLongLine
	}
	return n, err
}

// replyReader reads SMTP replies from r.
func replyReader(r io.Reader) *textproto.Reader {
	return textproto.NewReader(bufio.NewReader(&lineLimitReader{r: r}))
}

// readReply reads one reply and, like go-smtp's readResponse, turns a code
// other than expect into an *smtp.SMTPError.
func readReply(r *textproto.Reader, expect int) (string, error) {
	_, msg, err := r.ReadResponse(expect)
	var pe *textproto.Error
	if errors.As(err, &pe) {
		return msg, smtpError(pe)
	}
	return msg, err
}

// smtpError is go-smtp's toSMTPErr: the enhanced code (RFC 2034) is taken
// from the text, and from the start of every further line.
func smtpError(pe *textproto.Error) *smtp.SMTPError {
	se := &smtp.SMTPError{Code: pe.Code, Message: pe.Msg}
	code, msg, ok := strings.Cut(pe.Msg, " ")
	if !ok {
		return se
	}
	enh, ok := parseEnhanced(code)
	if !ok {
		return se
	}
	se.EnhancedCode = enh
	se.Message = strings.ReplaceAll(msg, "\n"+code+" ", "\n")
	return se
}

// parseEnhanced is go-smtp's parseEnhancedCode: three parts, each what
// strconv.Atoi accepts.
func parseEnhanced(s string) (smtp.EnhancedCode, bool) {
	var e smtp.EnhancedCode
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return e, false
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil {
			return e, false
		}
		e[i] = n
	}
	return e, true
}

// plainToTLS speaks greeting, EHLO and STARTTLS on raw and runs the TLS
// handshake under raw's deadline. It reports whether STARTTLS was sent,
// which decides the failure's stage (a refused greeting or EHLO is the
// connection's, anything from STARTTLS on is TLS's).
func plainToTLS(raw net.Conn, cfg *tls.Config, helloName string) (tc *tls.Conn, sentSTARTTLS bool, err error) {
	r := replyReader(raw)
	if _, err := readReply(r, 220); err != nil {
		return nil, false, err
	}
	offered, err := ehloOffersSTARTTLS(raw, r, helloName)
	if err != nil {
		return nil, false, err
	}
	if !offered {
		return nil, false, errNoSTARTTLSOffered
	}
	if _, err := io.WriteString(raw, "STARTTLS\r\n"); err != nil {
		return nil, true, err
	}
	if _, err := readReply(r, 220); err != nil {
		return nil, true, err
	}
	// What the server sent after its 220, before TLS, stays unread in r
	// and is dropped with it (RFC 3207 §5, CVE-2011-0411).
	tc = tls.Client(raw, cfg)
	if err := tc.Handshake(); err != nil {
		return nil, true, err
	}
	return tc, true, nil
}

// ehloOffersSTARTTLS sends EHLO (HELO when EHLO is not recognised, as
// go-smtp does: a server that only knows HELO offers no STARTTLS) and
// reports whether a line of the reply after the first is the keyword
// STARTTLS.
func ehloOffersSTARTTLS(raw net.Conn, r *textproto.Reader, helloName string) (bool, error) {
	if _, err := io.WriteString(raw, "EHLO "+helloName+"\r\n"); err != nil {
		return false, err
	}
	msg, err := readReply(r, 250)
	var se *smtp.SMTPError
	if errors.As(err, &se) && (se.Code == 500 || se.Code == 502) {
		if _, err := io.WriteString(raw, "HELO "+helloName+"\r\n"); err != nil {
			return false, err
		}
		_, err = readReply(r, 250)
		return false, err
	}
	if err != nil {
		return false, err
	}
	lines := strings.Split(msg, "\n")
	for _, l := range lines[1:] {
		if kw, _, _ := strings.Cut(l, " "); kw == "STARTTLS" {
			return true, nil
		}
	}
	return false, nil
}

// tlsSession is the connection go-smtp gets once TLS is on: it reads a
// greeting first (go-smtp expects one on a new client; the server sent
// its own before STARTTLS) and then the TLS connection.
type tlsSession struct {
	*tls.Conn
	greeting []byte
}

func (t *tlsSession) Read(p []byte) (int, error) {
	if len(t.greeting) > 0 {
		n := copy(p, t.greeting)
		t.greeting = t.greeting[n:]
		return n, nil
	}
	return t.Conn.Read(p)
}

// stageOf is the stage a failure of plainToTLS belongs to.
func stageOf(sentSTARTTLS bool) reply.Stage {
	if sentSTARTTLS {
		return reply.StageTLS
	}
	return reply.StageConnect
}
