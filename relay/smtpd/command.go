package smtpd

import (
	"bytes"
	"io"
	"strconv"
	"strings"
)

// maxHeldLine is how much of a line without its end is held back to be
// looked at; beyond it the line cannot be a command this layer acts on
// (and go-smtp refuses it as too long).
const maxHeldLine = 2048

// cmdBuf is the read size outside DATA: a held line start (at most
// maxHeldLine) plus room for at least as much again.
const cmdBuf = 2 * maxHeldLine

// readCommand gives go-smtp at most one command line per Read outside DATA,
// after command has looked at it. go-smtp asks for more only once it has
// answered the previous line, so a line handled here (STARTTLS, BDAT) is
// answered in its turn, and what follows it in the buffer is known never
// to have reached go-smtp. (SASL responses in an AUTH exchange are lines
// too; command acts on none of them: base64 has no space, and AUTH exists
// only once STARTTLS no longer does.)
func (c *trackedConn) readCommand(p []byte) (int, error) {
	for {
		if c.closing.Load() != connOpen {
			return 0, io.EOF
		}
		if c.dropBytes > 0 && len(c.inbuf) > 0 {
			n := min(int64(len(c.inbuf)), c.dropBytes)
			c.inbuf, c.dropBytes = c.inbuf[n:], c.dropBytes-n
			continue
		}
		if c.passLine && len(c.inbuf) > 0 {
			end := len(c.inbuf)
			if i := bytes.IndexByte(c.inbuf, '\n'); i >= 0 {
				end = i + 1
			}
			n := copy(p, c.inbuf[:end])
			if c.inbuf[n-1] == '\n' {
				c.passLine = false
			}
			c.inbuf = c.inbuf[n:]
			return n, nil
		}
		if c.dropBytes == 0 && !c.passLine {
			if i := bytes.IndexByte(c.inbuf, '\n'); i >= 0 {
				if err := c.command(c.inbuf[:i+1]); err != nil {
					return 0, err
				}
				continue
			}
			if len(c.inbuf) > maxHeldLine {
				c.passLine, c.envLine = true, ""
				continue
			}
		}
		if c.readErr != nil {
			err := c.readErr
			c.readErr = nil
			return 0, err
		}
		if c.rbuf == nil {
			c.rbuf = make([]byte, cmdBuf)
		}
		// Here inbuf holds at most the start of one line (no LF, at
		// most maxHeldLine octets): it moves to the front of rbuf and
		// the read fills the rest, so reading a command allocates
		// nothing.
		held := copy(c.rbuf, c.inbuf)
		n, err := c.readConn(c.rbuf[held:])
		c.inbuf = c.rbuf[:held+n]
		if err != nil {
			if n == 0 || c.closing.Load() != connOpen {
				return 0, err
			}
			c.readErr = err
		}
	}
}

// command looks at one command line before go-smtp does. STARTTLS is
// handled here; after the handshake only EHLO, HELO, NOOP, RSET and QUIT
// reach go-smtp until the client has greeted again (RFC 3207 §4.2: the
// server discards what it knew, such as the EHLO argument, and go-smtp
// would still have the old one). BDAT is refused here, and its chunk, as
// go-smtp would frame it, discarded (see goSMTPChunking); the transaction
// stays, so a client can fall back to DATA. Whatever is passed on sets
// passLine; a line answered here is removed from inbuf.
func (c *trackedConn) command(line []byte) error {
	text := strings.TrimRight(string(line), "\r\n")
	verb, rest, _ := strings.Cut(text, " ")
	verb = strings.ToUpper(verb)
	c.envLine = ""
	if verb == "MAIL" || verb == "RCPT" {
		c.envLine = text
	}
	answer := func(reply string) error {
		c.inbuf = c.inbuf[len(line):]
		_, err := c.Write([]byte(reply))
		return err
	}
	switch {
	case verb == "STARTTLS" && c.starttls != nil && c.tlsConn.Load() == nil:
		if strings.TrimSpace(rest) != "" {
			return answer("501 5.5.4 Syntax: STARTTLS takes no parameters\r\n")
		}
		return c.startTLS(len(line))
	case c.needHelo:
		switch verb {
		case "EHLO", "HELO":
			c.needHelo = false
		case "NOOP", "RSET", "QUIT":
		default:
			return answer("503 5.5.1 Send EHLO first: TLS is on, and what was said before it is forgotten (RFC 3207 section 4.2)\r\n")
		}
	case verb == "BDAT":
		// RFC 3030 §2: a chunk of the given size follows the line
		// whatever the reply; a size that does not parse frames nothing
		// (go-smtp's rules, conn.go handleBdat).
		f := strings.Fields(rest)
		if len(f) < 1 || len(f) > 2 || (len(f) == 2 && !strings.EqualFold(f[1], "LAST")) {
			return answer("501 5.5.4 Syntax: BDAT size [LAST]\r\n")
		}
		size, err := strconv.ParseUint(f[0], 10, 32)
		if err != nil {
			return answer("501 5.5.4 Malformed BDAT size\r\n")
		}
		c.dropBytes = int64(size)
		return answer("502 5.5.1 BDAT is not supported here; use DATA\r\n") // errBDAT's words
	}
	c.passLine = true
	return nil
}
