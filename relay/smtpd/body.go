package smtpd

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/o365relay/o365relay/relay/reply"
	"github.com/o365relay/o365relay/relay/rewrite"
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
	errBareLF = reply.New(550, reply.EnhancedCode{5, 6, 0},
		"Message has a line ending in bare LF (no CR); SMTP requires CRLF (RFC 5321 section 2.3.8). "+
			"Fix the sender, or set line_endings: normalize (O365RELAY_LINE_ENDINGS) in the relay's configuration")
	errBareCR = reply.New(550, reply.EnhancedCode{5, 6, 0},
		"Message has a bare CR not followed by LF; SMTP requires CRLF (RFC 5321 section 2.3.8). "+
			"Fix the sender, or set line_endings: normalize (O365RELAY_LINE_ENDINGS) in the relay's configuration")
	// The same line limit as go-smtp's for commands (see New); the
	// connection is closed after this reply, as go-smtp does for a
	// command line.
	errLineTooLong = reply.New(500, reply.EnhancedCode{5, 5, 2}, "Line too long (limit 2000 octets), closing connection")
	errLoop        = reply.New(554, reply.EnhancedCode{5, 4, 6},
		fmt.Sprintf("Too many Received: headers (more than %d): mail loop detected", maxReceived))
)

// errNUL refuses a NUL in the message: RFC 5322 §3.5 leaves it out of a
// body's text, RFC 6152 §3 out of 8BITMIME data, and only BINARYMIME
// (not offered) may carry it; a NUL is where many mail programs cut a
// string short, so the message would not arrive as sent.
var errNUL = reply.New(550, reply.EnhancedCode{5, 6, 0},
	"Message contains a NUL octet, which SMTP mail may not carry (RFC 5322 section 3.5, RFC 6152 section 3); encode binary content (base64)")

// errHeaderTooLong refuses a message whose sender rule rewrites From:
// (rewrite: envelope+from) when its header section is longer than the
// rewrite reads (rewrite.MaxHeader): Exchange would refuse the
// unrewritten From: after the relay had acknowledged the message.
var errHeaderTooLong = reply.New(552, reply.EnhancedCode{5, 3, 4},
	fmt.Sprintf("Header section longer than %d octets: this sender's rule rewrites the From: header (rewrite: envelope+from), "+
		"which the relay does for header sections up to that size", rewrite.MaxHeader))

// bodyChecker streams a message's content from dataReader (dot-unstuffed,
// every byte as the client sent it) to the sink and enforces the
// line-ending policy, the NUL ban, the hop limit and, for a From: rewrite,
// the header size — without holding more than one read buffer.
//
// It works on slices: a chunk is searched for LF, CR and NUL with
// bytes.IndexByte, and only line ends are looked at one by one, so that a
// line of any length costs a memmove and the check cannot be defeated by
// where read boundaries fall. In reject mode nothing is copied: the
// caller's buffer is checked in place and passed on unchanged.
type bodyChecker struct {
	r    io.Reader
	mode LineEndings

	buf    []byte // normalise mode: input buffer
	out    []byte // normalise mode: pending output
	outBuf []byte // out's backing array, reused for every refill
	pendCR bool   // the last byte seen was a CR whose LF has not come yet
	err    error  // sticky error
	eof    bool

	inHead  bool   // still in the header section
	lineBuf []byte // first bytes of the current header line, for "Received:"
	lineLen int
	hops    int
	// headLen counts the header section's octets, its empty line
	// included; maxHead (0: none) is the most a rewrite allows.
	headLen, maxHead int64
}

func newBodyChecker(r io.Reader, mode LineEndings) *bodyChecker {
	c := &bodyChecker{r: r, mode: mode, inHead: true}
	if mode == NormalizeBareLineEndings {
		const n = 32 * 1024
		// Normalising turns each bare LF into CRLF, so one input buffer
		// yields at most twice its size (+2 for a CR held over).
		c.buf, c.outBuf = make([]byte, n), make([]byte, 0, 2*n+2)
	}
	return c
}

func (c *bodyChecker) Read(p []byte) (int, error) {
	if c.mode == RejectBareLineEndings {
		return c.readChecked(p)
	}
	return c.readNormalized(p)
}

// readChecked is reject mode: the bytes pass unchanged, or the stream ends
// with the refusal.
func (c *bodyChecker) readChecked(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.r.Read(p)
	c.check(p[:n])
	if c.err == nil && err == io.EOF && c.pendCR {
		c.err = errBareCR
	}
	if c.err != nil {
		return 0, c.err
	}
	if err != nil && err != io.EOF {
		c.err = err
	}
	return n, err
}

// check applies the rules to one chunk in reject mode.
func (c *bodyChecker) check(b []byte) {
	if c.err != nil || len(b) == 0 {
		return
	}
	if bytes.IndexByte(b, 0) >= 0 {
		c.err = errNUL
		return
	}
	if c.pendCR {
		if b[0] != '\n' {
			c.err = errBareCR
			return
		}
		c.pendCR = false
		c.endLine()
		b = b[1:]
	}
	for len(b) > 0 && c.err == nil {
		j := bytes.IndexByte(b, '\n')
		if j < 0 {
			// The chunk ends inside a line; only its last byte may be
			// a CR (whose LF comes next).
			k := bytes.IndexByte(b, '\r')
			switch {
			case k < 0:
				c.text(b)
			case k == len(b)-1:
				c.text(b[:k])
				c.pendCR = true
			default:
				c.err = errBareCR
			}
			return
		}
		line := b[:j]
		switch {
		case j == 0 || line[j-1] != '\r':
			c.err = errBareLF
		case bytes.IndexByte(line[:j-1], '\r') >= 0:
			c.err = errBareCR
		default:
			c.text(line[:j-1])
			c.endLine()
		}
		b = b[j+1:]
	}
}

// readNormalized is normalise mode: every bare CR and bare LF becomes
// CRLF; nothing else changes.
func (c *bodyChecker) readNormalized(p []byte) (int, error) {
	for len(c.out) == 0 {
		if c.err != nil {
			return 0, c.err
		}
		if c.eof {
			if c.pendCR {
				c.pendCR = false
				c.out = append(c.outBuf[:0], '\r', '\n')
				c.endLine()
				continue
			}
			return 0, io.EOF
		}
		n, err := c.r.Read(c.buf)
		// Reuse the one output buffer: out[:0] after out = out[n:]
		// would have lost the capacity already returned, and every
		// refill would allocate (≈4 bytes allocated per body byte).
		c.out = c.outBuf[:0]
		c.normalize(c.buf[:n])
		if err == io.EOF {
			c.eof = true
		} else if err != nil && c.err == nil {
			c.err = err
		}
	}
	n := copy(p, c.out)
	c.out = c.out[n:]
	return n, nil
}

// normalize appends one chunk, normalised, to out.
func (c *bodyChecker) normalize(b []byte) {
	if c.err != nil || len(b) == 0 {
		return
	}
	if bytes.IndexByte(b, 0) >= 0 {
		c.err = errNUL
		return
	}
	for len(b) > 0 && c.err == nil {
		if c.pendCR {
			// CR LF, or a bare CR: either way one line end.
			c.pendCR = false
			c.out = append(c.out, '\r', '\n')
			c.endLine()
			if b[0] == '\n' {
				b = b[1:]
			}
			continue
		}
		k := bytes.IndexAny(b, "\r\n")
		if k < 0 {
			c.out = append(c.out, b...)
			c.text(b)
			return
		}
		c.out = append(c.out, b[:k]...)
		c.text(b[:k])
		if b[k] == '\r' {
			c.pendCR = true
		} else {
			c.out = append(c.out, '\r', '\n')
			c.endLine()
		}
		b = b[k+1:]
	}
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

// refusal returns the reply for a rule the body broke (including the
// 552 5.3.4 for a message over the size limit, whatever SIZE= said), or nil.
func (c *bodyChecker) refusal() *reply.Error {
	if c.err == nil {
		return nil
	}
	return reply.As(c.err)
}

// text notes a run of line content (no CR or LF) in the header section.
func (c *bodyChecker) text(run []byte) {
	if !c.inHead || len(run) == 0 {
		return
	}
	if c.lineLen < len("received:") {
		c.lineBuf = append(c.lineBuf, run[:min(len(run), len("received:")-c.lineLen)]...)
	}
	c.lineLen += len(run)
	c.headLen += int64(len(run))
	if c.maxHead > 0 && c.headLen > c.maxHead {
		c.err = errHeaderTooLong
	}
}

// endLine is called at each line end (CRLF out); it tracks the header
// section (RFC 5322 §2.1: headers end at the first empty line) and counts
// Received: fields.
func (c *bodyChecker) endLine() {
	if !c.inHead {
		return
	}
	c.headLen += 2
	if c.maxHead > 0 && c.headLen > c.maxHead {
		c.err = errHeaderTooLong
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
