package smtpd

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// guardedListener decides, before go-smtp sees a connection, whether the peer
// may talk to us at all: its address must be in an allowed network, and the
// total and per-address connection caps must have room. A refused peer gets
// one SMTP reply (RFC 5321 §3.1: a server may answer the connection with 554
// instead of 220) and the connection is closed; the refusal is logged.
type guardedListener struct {
	net.Listener
	allowed   []netip.Prefix
	maxTotal  int
	maxPerIP  int
	log       *zap.Logger
	onRefused func(reason string)
	// maxSession bounds a whole connection's life, so a client that sends
	// one NOOP a minute cannot hold a slot forever.
	maxSession time.Duration
	// sizeLine is go-smtp's EHLO SIZE line and the one to send instead
	// (see New).
	sizeLine [2][]byte
	// implicitTLS: every connection is TLS from its first byte.
	implicitTLS bool
	tlsConfig   *tls.Config

	mu    sync.Mutex
	total int
	perIP map[netip.Addr]int
}

func (l *guardedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := remoteIP(c)
		if !l.isAllowed(ip) {
			l.refuse(c, ip, "network", "554 5.7.1 Relay access denied: your address is not in allowed_networks\r\n")
			continue
		}
		if reason := l.reserve(ip); reason != "" {
			l.refuse(c, ip, reason, "421 4.7.0 Too many connections, try again later\r\n")
			continue
		}
		tc := &trackedConn{Conn: c, ip: ip, release: l.release, started: time.Now(), maxSession: l.maxSession, log: l.log, sizeLine: l.sizeLine}
		if l.implicitTLS {
			// The first bytes are a ClientHello, wanted here; go-smtp
			// runs the handshake under its deadlines.
			tc.readOnce = true
			return tls.Server(tc, l.tlsConfig), nil
		}
		return tc, nil
	}
}

func (l *guardedListener) isAllowed(ip netip.Addr) bool {
	for _, p := range l.allowed {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func (l *guardedListener) reserve(ip netip.Addr) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.maxTotal > 0 && l.total >= l.maxTotal {
		return "max_connections"
	}
	if l.maxPerIP > 0 && l.perIP[ip] >= l.maxPerIP {
		return "max_connections_per_client"
	}
	l.total++
	l.perIP[ip]++
	return ""
}

func (l *guardedListener) release(ip netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.perIP[ip]--; l.perIP[ip] <= 0 {
		delete(l.perIP, ip)
	}
}

// refuse answers and closes without blocking the accept loop for long: the
// write has a short deadline so a peer that does not read cannot stall us.
func (l *guardedListener) refuse(c net.Conn, ip netip.Addr, reason, line string) {
	l.log.Warn("connection refused", zap.String("client", ip.String()), zap.String("reason", reason))
	if l.onRefused != nil {
		l.onRefused(reason)
	}
	_ = c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	_, _ = c.Write([]byte(line))
	if err := c.Close(); err != nil {
		l.log.Debug("closing refused connection", zap.Error(err))
	}
}

func remoteIP(c net.Conn) netip.Addr {
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// trackedConn is the connection go-smtp serves. It gives back the
// connection's slot on Close, rewrites the few go-smtp replies this relay
// words differently, and ends the session after a last reply.
//
// The rewrites are exact: go-smtp writes each reply line with a single
// flushed Write (textproto.Writer.PrintfLine). Once TLS wraps this
// connection (go-smtp puts tls.Server on top of it for STARTTLS) the bytes
// here are ciphertext: before the listener offers TLS, what depends on
// seeing replies must move above TLS — else CHUNKING is advertised while
// BDAT is refused, the SIZE line shows one byte more, syntax errors close
// only after go-smtp's fourth, and splitCRCR cannot repair CR CR LF.
// closeAfterReply keeps working (one reply is one TLS record write).
type trackedConn struct {
	net.Conn
	ip         netip.Addr
	release    func(netip.Addr)
	started    time.Time
	maxSession time.Duration
	log        *zap.Logger
	readOnce   bool
	sizeLine   [2][]byte

	once sync.Once

	// DATA-phase repair of CR CR (see splitCRCR). Only the session's own
	// goroutine reads, so these need no lock.
	inData  bool
	prevCR  bool
	pending []byte
	markers int // NULs inserted and not yet consumed by the body checker

	// syntaxErrors counts replies that say the client does not speak SMTP
	// properly (see countSyntaxError).
	syntaxErrors int
	// closing is connOpen, connCloseAfterReply (the next reply is the last
	// one the client hears) or connClosed (later replies are dropped and
	// reads end). Set from the session and read by go-smtp's goroutine.
	closing atomic.Int32
}

const (
	connOpen int32 = iota
	connCloseAfterReply
	connClosed
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
}

const (
	replyTooManyErrors = "421 4.7.0 Too many errors, closing connection\r\n"
	replyLineTooLong   = "500 5.5.2 Line too long (limit 2000 octets), closing connection\r\n"
	replyInternal      = "421 4.3.0 Internal error, closing connection; try again later\r\n"
)

// goSMTPBadParam starts go-smtp's reply to a MAIL or RCPT parameter it does
// not know or cannot parse (it uses 500 5.5.4 for nothing else).
var goSMTPBadParam = []byte("500 5.5.4 ")

// goSMTPChunking is the EHLO line advertising CHUNKING (RFC 3030), which
// go-smtp always sends. BDAT is refused (see session.Data): go-smtp runs
// Session.Data for BDAT on a second goroutine, concurrently with the
// connection's own, which this package's per-connection state does not
// allow. It is never the last EHLO line (SMTPUTF8 and SIZE follow it).
var goSMTPChunking = []byte("250-CHUNKING\r\n")

// Read watches the first bytes a client sends: an HTTP request or a TLS
// ClientHello on the plain SMTP port is answered once and the connection
// closed, instead of feeding binary or HTTP lines to the SMTP parser (which
// would answer each with an error). It also enforces the session's maximum
// life.
func (c *trackedConn) Read(p []byte) (n int, err error) {
	defer func() {
		if v := recover(); v != nil {
			logPanic(c.log, v, c.ip, "reading from the client")
			c.writeAndClose(replyInternal)
			n, err = 0, io.EOF
		}
	}()
	if c.closing.Load() != connOpen {
		return 0, io.EOF
	}
	if c.maxSession > 0 && time.Since(c.started) > c.maxSession {
		c.writeAndClose("421 4.4.2 Session too long, closing connection\r\n")
		return 0, io.EOF
	}
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	n, err = c.Conn.Read(p)
	if c.inData && n > 0 {
		n = c.splitCRCR(p, n)
	}
	if !c.readOnce && n > 0 {
		c.readOnce = true
		if kind := foreignProtocol(p[:n]); kind != "" {
			c.log.Info("non-SMTP client refused", zap.String("client", c.ip.String()), zap.String("protocol", kind))
			c.writeAndClose("500 5.5.1 This is an SMTP server; " + kind + " is not spoken here\r\n")
			return 0, io.EOF
		}
	}
	return n, err
}

// splitCRCR works around go-smtp's DATA reader (v0.25.1 data.go), which
// after a CR that is followed by another CR forgets that the second CR may
// start a CRLF: in "\r\r\n.\r\n" it never sees the end of data, so the client
// waits for the DATA timeout instead of hearing 550 (curl --crlf on a file
// that already has CRLF endings sends exactly that). Between two CRs in the
// DATA phase a NUL is inserted, which makes the second CR start a fresh
// CRLF for go-smtp's state machine; the body checker then refuses the bare
// CR as usual, or, normalising, drops the marker (markers counts them).
// p[:n] is rewritten in place; what does not fit waits in pending.
func (c *trackedConn) splitCRCR(p []byte, n int) int {
	var out []byte
	for i, b := range p[:n] {
		if b == '\r' && c.prevCR {
			if out == nil {
				out = append(make([]byte, 0, n+8), p[:i]...)
			}
			out = append(out, 0)
			c.markers++
		}
		c.prevCR = b == '\r'
		if out != nil {
			out = append(out, b)
		}
	}
	if out == nil {
		return n
	}
	m := copy(p, out)
	c.pending = append(c.pending, out[m:]...)
	return m
}

// startData and the reply to DATA bracket the phase splitCRCR works in.
func (c *trackedConn) startData() { c.inData, c.prevCR = true, false }

// takeMarker reports whether a NUL the body checker sees after a bare CR is
// one splitCRCR inserted.
func (c *trackedConn) takeMarker() bool {
	if c.markers > 0 {
		c.markers--
		return true
	}
	return false
}

func (c *trackedConn) writeAndClose(line string) {
	c.closing.Store(connClosed)
	_ = c.Conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
	_, _ = c.Conn.Write([]byte(line))
	_ = c.Close()
}

// foreignProtocol recognises the first bytes of a TLS handshake record
// (RFC 8446 §5.1: content type 22, legacy version 3.x) and of an HTTP/1
// request line.
func foreignProtocol(b []byte) string {
	if len(b) >= 2 && b[0] == 0x16 && b[1] == 0x03 {
		return "TLS (use STARTTLS after EHLO)"
	}
	for _, m := range []string{"GET ", "POST ", "HEAD ", "PUT ", "OPTIONS ", "CONNECT ", "DELETE ", "PATCH "} {
		if bytes.HasPrefix(b, []byte(m)) {
			return "HTTP"
		}
	}
	return ""
}

// closeAfterReply makes the next reply the connection's last: later replies
// are dropped and reads report EOF, so go-smtp ends the session (and does
// not answer commands the client had already pipelined).
func (c *trackedConn) closeAfterReply() {
	c.closing.CompareAndSwap(connOpen, connCloseAfterReply)
}

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
	// go-smtp writes nothing while it reads a message: the first write
	// after DATA started is the reply to it.
	c.inData, c.markers = false, 0
	if bytes.Equal(p, goSMTPChunking) {
		return len(p), nil
	}
	if c.sizeLine[0] != nil && bytes.Equal(p, c.sizeLine[0]) {
		if _, err := c.Conn.Write(c.sizeLine[1]); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	out := p
	if r, ok := goSMTPReplies[string(p)]; ok {
		out = r
	} else if bytes.HasPrefix(p, goSMTPBadParam) {
		// go-smtp answers an unknown or malformed MAIL/RCPT parameter
		// with 500, the code for an unrecognised command; RFC 5321
		// §4.2.2's 501 is "syntax error in parameters or arguments".
		out = append([]byte("501"), p[3:]...)
	}
	if _, err := c.Conn.Write(out); err != nil {
		return 0, err
	}
	if c.countSyntaxError(out) {
		if _, err := c.Conn.Write([]byte(replyTooManyErrors)); err != nil {
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

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.release(c.ip) })
	return err
}
