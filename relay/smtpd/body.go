package smtpd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/o365relay/o365relay/relay/reply"
)

// LineEndings says what to do with a bare CR or bare LF in DATA.
type LineEndings int

const (
	// RejectBareLineEndings refuses the message. A bare LF is how SMTP
	// smuggling hides a second message inside the first ("\n.\n" is an end
	// of data to some servers and not to others), so a relay must not pass
	// one on as it came (RFC 5321 §2.3.8: lines end in CRLF, and "the
	// character sequence <CR><LF> SHOULD be sent only as the line
	// terminator").
	RejectBareLineEndings LineEndings = iota
	// NormalizeBareLineEndings rewrites every bare CR and bare LF to CRLF,
	// for applications that send Unix line endings and cannot be fixed.
	NormalizeBareLineEndings
)

// maxReceived is the hop count beyond which a message is taken to be looping
// (RFC 5321 §6.3: "a simple counting of the number of Received: header fields
// ... is an effective method of detecting loops"; Postfix's hopcount_limit is
// 50).
const maxReceived = 50

var (
	errBareLF = reply.New(550, smtp.EnhancedCode{5, 6, 0},
		"Message has a line ending in bare LF (no CR); SMTP requires CRLF (RFC 5321 section 2.3.8). "+
			"Fix the sender, or set line_endings: normalize (O365RELAY_LINE_ENDINGS) in the relay's configuration")
	errBareCR = reply.New(550, smtp.EnhancedCode{5, 6, 0},
		"Message has a bare CR not followed by LF; SMTP requires CRLF (RFC 5321 section 2.3.8). "+
			"Fix the sender, or set line_endings: normalize (O365RELAY_LINE_ENDINGS) in the relay's configuration")
	// go-smtp applies one line limit to commands and DATA alike (see
	// New); past it the rest of the stream cannot be framed, so the
	// connection is closed after this reply.
	errLineTooLong = reply.New(500, smtp.EnhancedCode{5, 5, 2}, "Line too long (limit 2000 octets), closing connection")
	errLoop        = reply.New(554, smtp.EnhancedCode{5, 4, 6},
		fmt.Sprintf("Too many Received: headers (more than %d): mail loop detected", maxReceived))
)

// bodyChecker streams a message body from go-smtp's DATA reader (dot-unstuffed,
// CRLF preserved, bare LF passed through) and enforces the line-ending policy
// and the hop limit without holding more than one read buffer.
//
// It is a small state machine over bytes rather than a line scanner so that a
// line of any length costs nothing and the check cannot be defeated by where
// read boundaries fall.
type bodyChecker struct {
	r    io.Reader
	mode LineEndings

	buf     []byte // input buffer
	out     []byte // pending output (normalised bytes not yet returned)
	outBuf  []byte // out's backing array, reused for every refill
	pendCR  bool   // last input byte was CR, not yet known to be followed by LF
	err     error  // sticky error
	eof     bool
	inHead  bool   // still in the header section
	bol     bool   // at beginning of a line
	lineBuf []byte // first bytes of the current header line, for "Received:"
	lineLen int
	hops    int
	// marker reports whether a NUL right after a bare CR was inserted by
	// the connection (trackedConn.splitCRCR); nil means none ever is.
	marker func() bool
}

func newBodyChecker(r io.Reader, mode LineEndings) *bodyChecker {
	const n = 32 * 1024
	// Normalising turns each bare LF into CRLF, so one input buffer
	// yields at most twice its size (+2 for a CR held over).
	return &bodyChecker{r: r, mode: mode, buf: make([]byte, n), outBuf: make([]byte, 0, 2*n+2), inHead: true, bol: true}
}

func (c *bodyChecker) Read(p []byte) (int, error) {
	for len(c.out) == 0 {
		if c.err != nil {
			return 0, c.err
		}
		if c.eof {
			if c.pendCR {
				c.pendCR = false
				if c.fail(errBareCR) {
					return 0, c.err
				}
				c.emit('\r', '\n')
				continue
			}
			return 0, io.EOF
		}
		n, err := c.r.Read(c.buf)
		// Reuse the one output buffer: out[:0] after out = out[n:]
		// would have lost the capacity already returned, and every
		// refill would allocate (≈4 bytes allocated per body byte).
		c.out = c.outBuf[:0]
		for _, b := range c.buf[:n] {
			if !c.step(b) {
				break
			}
		}
		if err == io.EOF {
			c.eof = true
		} else if err != nil && c.err == nil {
			c.err = err
			if errors.Is(err, smtp.ErrTooLongLine) {
				c.err = errLineTooLong
			}
		}
	}
	n := copy(p, c.out)
	c.out = c.out[n:]
	return n, nil
}

// fail records err unless in normalise mode; it reports whether processing
// must stop.
func (c *bodyChecker) fail(err *reply.Error) bool {
	if c.mode == NormalizeBareLineEndings {
		return false
	}
	c.err = err
	return true
}

// step consumes one input byte; it returns false once an error is set.
func (c *bodyChecker) step(b byte) bool {
	if c.pendCR && b == 0 {
		if c.marker != nil && c.marker() {
			// The marker between two CRs: the CR before it is bare.
			c.pendCR = false
			if c.fail(errBareCR) {
				return false
			}
			c.emit('\r', '\n')
			c.endLine()
			return c.err == nil
		}
	}
	if c.pendCR {
		c.pendCR = false
		if b == '\n' {
			c.emit('\r', '\n')
			c.endLine()
			return c.err == nil
		}
		if c.fail(errBareCR) {
			return false
		}
		c.emit('\r', '\n')
		c.endLine()
		if c.err != nil {
			return false
		}
	}
	switch b {
	case '\r':
		c.pendCR = true
		return true
	case '\n':
		if c.fail(errBareLF) {
			return false
		}
		c.emit('\r', '\n')
		c.endLine()
		return c.err == nil
	}
	c.emit(b)
	if c.inHead && c.lineLen < len("received:") {
		c.lineBuf = append(c.lineBuf, b)
	}
	c.lineLen++
	return true
}

// readErr returns the error reading the DATA stream failed with (a
// timeout, the client gone), or nil. After one, where the message ends in
// the stream is unknown: what follows must not be read as commands.
func (c *bodyChecker) readErr() error {
	if c.err == nil || reply.As(c.err) != nil {
		return nil
	}
	return c.err
}

// refusal returns the reply for a rule the body broke (including go-smtp's
// 552 5.3.4 for a message over the size limit, whatever SIZE= said), or nil.
func (c *bodyChecker) refusal() *reply.Error {
	if c.err == nil {
		return nil
	}
	return reply.As(c.err)
}

func (c *bodyChecker) emit(bs ...byte) { c.out = append(c.out, bs...) }

// endLine is called at each CRLF; it tracks the header section (RFC 5322
// §2.1: headers end at the first empty line) and counts Received: fields.
func (c *bodyChecker) endLine() {
	if !c.inHead {
		return
	}
	if c.lineLen == 0 {
		c.inHead = false
		return
	}
	if len(c.lineBuf) == len("received:") && bytes.EqualFold(c.lineBuf, []byte("received:")) {
		c.hops++
		if c.hops > maxReceived {
			c.err = errLoop
		}
	}
	c.lineBuf = c.lineBuf[:0]
	c.lineLen = 0
}

// receivedHeader builds the trace field this relay prepends (RFC 5321 §4.4).
// Protocol names follow RFC 3848: SMTP for HELO, ESMTP for EHLO, with S for
// TLS and A for an authenticated client.
func receivedHeader(helo, clientIP, host, id string, ehlo, tls, auth bool, now time.Time) string {
	proto := "SMTP"
	if ehlo {
		proto = "ESMTP"
		if tls {
			proto += "S"
		}
		if auth {
			proto += "A"
		}
	}
	return fmt.Sprintf("Received: from %s ([%s])\r\n\tby %s (o365relay) with %s id %s;\r\n\t%s\r\n",
		sanitizeHelo(helo), clientIP, host, proto, id, now.Format(time.RFC1123Z))
}

// sanitizeHelo keeps what a client called itself printable and short: the
// name goes into a header field that Exchange will parse.
func sanitizeHelo(s string) string {
	if len(s) > 255 {
		s = s[:255]
	}
	return strings.Map(func(r rune) rune {
		if r <= ' ' || r >= 0x7f || r == '(' || r == ')' || r == ';' {
			return '?'
		}
		return r
	}, s)
}
