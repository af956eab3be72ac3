package exchangetest

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"
)

// The fake sees every byte the client sends as plaintext, per connection:
// go-smtp is given no TLS configuration, and faultConn, the connection
// go-smtp serves, runs STARTTLS itself (RFC 3207) and hands go-smtp one
// command line per read. That is what lets it check the client's exact
// MAIL and RCPT lines (go-smtp's parser unquotes local parts and drops
// parameters it knows), frame DATA by RFC 5321 itself (go-smtp's reader
// mishandles CR CR LF and a dot before a bare CR), and fail the TLS
// handshake or leave STARTTLS and XOAUTH2 out of EHLO for scripted
// sessions.

// maxLine bounds a command line the fake reads whole; go-smtp's own limit
// (MaxLineLength) refuses longer ones.
const maxLine = 64 << 10

// listener applies SetDown and connect faults before go-smtp sees a
// connection, and decides the per-session faults.
type listener struct {
	net.Listener
	s *Server
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.s.down.Load() {
			if err := c.Close(); err != nil {
				l.s.log.Debug("close refused connection", zap.Error(err))
			}
			continue
		}
		if f := l.s.take(StageConnect, ""); f != nil {
			if f.Reply != nil && !f.Drop {
				if err := c.SetWriteDeadline(time.Now().Add(l.s.opts.WriteTimeout)); err == nil {
					_, _ = c.Write(replyLine(f.Reply)) // the client may already be gone
				}
			}
			if err := c.Close(); err != nil {
				l.s.log.Debug("close faulted connection", zap.Error(err))
			}
			continue
		}
		id := int(l.s.session.Add(1))
		l.s.mu.Lock()
		l.s.stats.Sessions++
		l.s.mu.Unlock()
		fc := &faultConn{Conn: c, s: l.s, id: id}
		fc.br = bufio.NewReaderSize(c, maxLine)
		fc.noSTARTTLS = l.s.take(StageNoSTARTTLS, "") != nil
		fc.noXOAUTH2 = l.s.take(StageNoXOAUTH2, "") != nil
		return fc, nil
	}
}

// faultConn is the connection go-smtp serves: the TCP connection, with
// TLS run underneath go-smtp after STARTTLS. Only go-smtp's connection
// goroutine reads and writes it (session methods run on that goroutine
// too), so its fields need no lock.
type faultConn struct {
	net.Conn // TCP; deadlines always go here (a tls.Conn passes them down)
	s        *Server
	id       int

	tlsConn    *tls.Conn     // set once STARTTLS completed
	br         *bufio.Reader // plaintext from the client: TCP, then TLS
	pending    []byte        // the rest of a line go-smtp's buffer had no room for
	line       string        // the MAIL/RCPT line go-smtp is handling, without CRLF
	afterTLS   bool          // TLS on and no EHLO since (RFC 3207 §4.2)
	noSTARTTLS bool          // this session's EHLO leaves STARTTLS out
	noXOAUTH2  bool          // this session's EHLO after TLS leaves XOAUTH2 out

	data *dataReader // the message being read, between 354 and its end

	closedOnce sync.Once
	closeErr   error
}

func (c *faultConn) Close() error {
	c.closedOnce.Do(func() { c.closeErr = c.out().Close() })
	return c.closeErr
}

// out is where replies go: through TLS once it is on.
func (c *faultConn) out() net.Conn {
	if c.tlsConn != nil {
		return c.tlsConn
	}
	return c.Conn
}

// isTLS reports whether STARTTLS completed on this connection.
func (c *faultConn) isTLS() bool { return c.tlsConn != nil }

// Write passes go-smtp's replies on. It adds STARTTLS to the EHLO reply
// (go-smtp, having no TLS configuration, does not list it), leaves
// PIPELINING out with NoPipelining, and notes the 354 that starts a
// message.
func (c *faultConn) Write(p []byte) (int, error) {
	w := c.out()
	pipelining := bytes.Equal(p, []byte("250-PIPELINING\r\n"))
	if !pipelining || !c.s.opts.NoPipelining {
		if _, err := w.Write(p); err != nil {
			return 0, err
		}
	}
	switch {
	case pipelining:
		// go-smtp's first EHLO keyword line.
		if c.tlsConn == nil && !c.noSTARTTLS && !c.s.opts.NoSTARTTLS {
			if _, err := w.Write([]byte("250-STARTTLS\r\n")); err != nil {
				return 0, err
			}
		}
	case bytes.HasPrefix(p, []byte("354 ")):
		c.data = &dataReader{c: c, bol: true, max: c.s.srv.MaxMessageBytes}
	}
	return len(p), nil
}

// Read gives go-smtp one command line per call. During DATA it gives
// go-smtp only the end of data (".\r\n"): the session reads the message
// itself through data(), and what it did not read is discarded here.
func (c *faultConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	if d := c.data; d != nil {
		c.data = nil
		if _, err := io.Copy(io.Discard, d); err != nil && !errors.Is(err, smtp.ErrDataTooLarge) {
			return 0, err
		}
		c.pending = []byte(".\r\n")
		return c.Read(p)
	}
	for {
		line, err := c.br.ReadSlice('\n')
		if len(line) == 0 {
			if err == nil || errors.Is(err, bufio.ErrBufferFull) {
				continue
			}
			return 0, err
		}
		handled, herr := c.command(line)
		if herr != nil {
			return 0, herr
		}
		if handled {
			continue
		}
		n := copy(p, line)
		c.pending = append(c.pending[:0], line[n:]...)
		return n, nil
	}
}

// command looks at a command line before go-smtp does: STARTTLS is run
// here, MAIL and RCPT are kept for the session, AUTH lines are checked
// for what go-smtp normalises away. It reports whether the line was
// handled (and is not passed on).
func (c *faultConn) command(raw []byte) (bool, error) {
	text := strings.TrimSuffix(strings.TrimSuffix(string(raw), "\n"), "\r")
	verb, _, _ := strings.Cut(text, " ")
	verb = strings.ToUpper(verb)
	c.line = ""
	switch verb {
	case "MAIL", "RCPT":
		c.line = text
		if c.afterTLS {
			c.s.violation("%s before EHLO after STARTTLS (RFC 3207 section 4.2)", verb)
		}
	case "EHLO", "HELO":
		c.afterTLS = false
	case "AUTH":
		c.checkAuthLine(text)
		if c.afterTLS {
			c.s.violation("AUTH before EHLO after STARTTLS (RFC 3207 section 4.2)")
		}
	case "STARTTLS":
		if c.tlsConn == nil && !c.noSTARTTLS && !c.s.opts.NoSTARTTLS {
			return true, c.startTLS()
		}
	}
	return false, nil
}

// checkAuthLine records what go-smtp normalises away: the case of the
// mechanism and the line length.
func (c *faultConn) checkAuthLine(line string) {
	mech, _, _ := strings.Cut(line[len("AUTH "):], " ")
	if mech != strings.ToUpper(mech) {
		c.s.violation("AUTH mechanism %q not in upper case", mech)
	}
	// RFC 5321 §4.5.3.1.4: 512 octets per command line; RFC 4954 §4 keeps
	// AUTH subject to it. The brief's limit is the 998-octet text line.
	if len(line) > 998 {
		c.s.violation("AUTH line of %d octets (initial response too long; use the two-step form, RFC 4954 §4)", len(line))
	}
}

// startTLS answers STARTTLS and runs the handshake, or applies a
// starttls or tls fault.
func (c *faultConn) startTLS() error {
	if f := c.s.take(StageSTARTTLS, ""); f != nil {
		if f.Reply != nil && !f.Drop {
			_, _ = c.Conn.Write(replyLine(f.Reply))
		}
		if err := c.Close(); err != nil {
			c.s.log.Debug("close faulted connection", zap.Error(err))
		}
		return io.EOF
	}
	if c.br.Buffered() > 0 {
		// RFC 3207 §4.2: nothing may follow STARTTLS before TLS.
		c.s.violation("%d octets sent after STARTTLS before the TLS handshake", c.br.Buffered())
	}
	if _, err := c.Conn.Write([]byte("220 2.0.0 SMTP server ready\r\n")); err != nil {
		return err
	}
	cfg := c.s.tlsConfig
	if f := c.s.take(StageTLS, ""); f != nil {
		if f.Certificate == nil {
			// Drop: close instead of handshaking.
			if err := c.Close(); err != nil {
				c.s.log.Debug("close faulted connection", zap.Error(err))
			}
			return io.EOF
		}
		cfg = &tls.Config{Certificates: []tls.Certificate{*f.Certificate}, MinVersion: tls.VersionTLS12}
	}
	t := tls.Server(c.Conn, cfg)
	if err := c.Conn.SetDeadline(time.Now().Add(c.s.opts.WriteTimeout)); err != nil {
		return err
	}
	if err := t.Handshake(); err != nil {
		c.s.log.Info("TLS handshake failed", zap.Int("session", c.id), zap.Error(err))
		_ = c.Conn.Close()
		return io.EOF
	}
	if err := c.Conn.SetDeadline(time.Time{}); err != nil {
		return err
	}
	c.tlsConn, c.afterTLS = t, true
	c.br.Reset(t)
	c.s.mu.Lock()
	c.s.stats.TLSSessions++
	c.s.mu.Unlock()
	return nil
}

// dataReader reads one message's content strictly by RFC 5321 §4.5.2:
// lines end in CRLF; the data ends at a line that is a single "."; a
// leading "." of any other line is removed. A bare CR, a bare LF or a NUL
// is recorded as a violation (RFC 5321 §2.3.8, RFC 5322 §2.3: a client
// must not send them), and kept in what the session records. Reading
// works line by line on the connection's buffer, not byte by byte, and is
// written independently of the relay's framing so that tests compare two
// readings.
type dataReader struct {
	c    *faultConn
	bol  bool   // at the start of a line
	cr   bool   // the last byte read was CR
	out  []byte // content not yet returned
	n    int64  // content octets so far
	max  int64  // go-smtp's MaxMessageBytes
	done bool
	err  error
	// violations seen in this message (each recorded once)
	bareCR, bareLF, nul bool
}

func (d *dataReader) Read(p []byte) (int, error) {
	for len(d.out) == 0 {
		if d.done {
			if d.n > d.max {
				return 0, smtp.ErrDataTooLarge
			}
			return 0, io.EOF
		}
		if d.err != nil {
			return 0, d.err
		}
		d.fill()
	}
	n := copy(p, d.out)
	d.out = d.out[n:]
	return n, nil
}

// fill reads up to the next LF and appends its content to out.
func (d *dataReader) fill() {
	chunk, err := d.c.br.ReadSlice('\n')
	if len(chunk) == 0 && err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		d.err = err
		return
	}
	if d.bol && string(chunk) == ".\r\n" {
		d.done = true
		d.check()
		return
	}
	if d.bol && chunk[0] == '.' {
		chunk = chunk[1:]
	}
	d.scan(chunk)
	d.n += int64(len(chunk))
	if d.n <= d.max {
		d.out = append(d.out[:0], chunk...)
	}
	// The next chunk starts a line only after CRLF (a chunk ends at LF
	// or where the buffer filled).
	d.bol = bytes.HasSuffix(chunk, []byte("\r\n")) || (len(chunk) == 1 && chunk[0] == '\n' && d.cr)
	if len(chunk) > 0 {
		d.cr = chunk[len(chunk)-1] == '\r'
	}
}

// scan notes bare CR, bare LF and NUL in one chunk of content.
func (d *dataReader) scan(b []byte) {
	for i, x := range b {
		switch x {
		case 0:
			d.nul = true
		case '\n':
			prevCR := d.cr
			if i > 0 {
				prevCR = b[i-1] == '\r'
			}
			if !prevCR {
				d.bareLF = true
			}
		case '\r':
			if i+1 < len(b) && b[i+1] != '\n' {
				d.bareCR = true
			}
		}
	}
	if len(b) > 0 && d.cr && b[0] != '\n' {
		d.bareCR = true // a CR ended the previous chunk
	}
}

// check records the message's violations at its end.
func (d *dataReader) check() {
	if d.cr {
		d.bareCR = true
	}
	if d.bareCR {
		d.c.s.violation("bare CR in message data (RFC 5321 section 2.3.8)")
	}
	if d.bareLF {
		d.c.s.violation("bare LF in message data (RFC 5321 section 2.3.8)")
	}
	if d.nul {
		d.c.s.violation("NUL in message data (RFC 5322 section 2.3; RFC 6152 section 3)")
	}
}
