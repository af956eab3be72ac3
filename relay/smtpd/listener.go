package smtpd

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
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
	// implicitTLS: every connection is TLS from its first byte (RFC 8314
	// §3.3). Otherwise a non-nil tlsConfig offers STARTTLS (RFC 3207).
	implicitTLS bool
	tlsConfig   *tls.Config
	// handshakeTimeout bounds a TLS handshake (the command timeout).
	handshakeTimeout time.Duration
	// authAvailable: a client outside allowed may connect (it must AUTH
	// before MAIL, see session.Mail).
	authAvailable bool
	beginData     func() bool // Server.beginData
	// dataBufs lends DATA read buffers to the connections (data.go).
	dataBufs *sync.Pool

	*connCaps
}

// connCaps counts the connections of every listener of a Server, so
// max_connections and max_connections_per_client hold across the plain
// and the implicit-TLS port together.
type connCaps struct {
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
		trusted := l.isAllowed(ip)
		if !trusted && !l.authAvailable {
			l.refuse(c, ip, "network", "554 5.7.1 Relay access denied: your address is not in allowed_networks\r\n")
			continue
		}
		if reason := l.reserve(ip, l.maxTotal, l.maxPerIP); reason != "" {
			l.refuse(c, ip, reason, "421 4.7.0 Too many connections, try again later\r\n")
			continue
		}
		tc := &trackedConn{Conn: c, ip: ip, trusted: trusted, release: l.release, started: time.Now(), maxSession: l.maxSession,
			log: l.log, sizeLine: l.sizeLine, handshakeTimeout: l.handshakeTimeout, beginData: l.beginData,
			bufs: l.dataBufs}
		if l.implicitTLS {
			// The handshake runs at the connection's first read or
			// write (go-smtp's greeting), on go-smtp's goroutine, not in
			// this accept loop.
			tc.implicit = tls.Server(c, l.tlsConfig)
		} else {
			tc.starttls = l.tlsConfig
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

func (l *connCaps) reserve(ip netip.Addr, maxTotal, maxPerIP int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if maxTotal > 0 && l.total >= maxTotal {
		return "max_connections"
	}
	if maxPerIP > 0 && l.perIP[ip] >= maxPerIP {
		return "max_connections_per_client"
	}
	l.total++
	l.perIP[ip]++
	return ""
}

func (l *connCaps) release(ip netip.Addr) {
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
// words differently, ends the session after a last reply, and owns TLS:
// go-smtp is never given a TLS configuration, so everything it reads and
// writes through this type is plaintext, whether the client spoke TLS from
// the first byte (implicit) or after STARTTLS (see the package comment).
//
// The rewrites are exact: go-smtp writes each reply line with a single
// flushed Write (textproto.Writer.PrintfLine).
type trackedConn struct {
	// Conn is the TCP connection. Addresses and deadlines are always
	// its own (a tls.Conn passes deadlines down to it).
	net.Conn
	ip         netip.Addr
	trusted    bool // the address is in allowed_networks
	release    func(netip.Addr)
	started    time.Time
	maxSession time.Duration
	log        *zap.Logger
	readOnce   bool
	sizeLine   [2][]byte

	// TLS. starttls, if set, is offered in EHLO until TLS is on;
	// implicit is the server side of a connection that is TLS from its
	// first byte, before its handshake. tlsConn is set once a handshake
	// has completed: from then on every read and write goes through it.
	starttls         *tls.Config
	implicit         *tls.Conn
	handshakeTimeout time.Duration
	tlsConn          atomic.Pointer[tls.Conn]

	// Command-line framing outside DATA (see readCommand). Only
	// go-smtp's goroutine reads, so these need no lock.
	inbuf    []byte // read from the client, not yet given to go-smtp
	rbuf     []byte // read buffer, reused
	readErr  error  // what the read that filled inbuf returned
	passLine bool   // the rest of the current line goes to go-smtp unexamined
	// envLine is the MAIL or RCPT line go-smtp is being given, as the
	// client sent it (without CRLF), for session.commandLine: go-smtp's
	// own parse of it loses the quoting. "" for any other line.
	envLine   string
	dropBytes int64 // a refused BDAT chunk's octets still to discard
	needHelo  bool  // TLS started: EHLO/HELO must come before anything else

	once sync.Once

	// beginData counts the session into DATA as go-smtp's 354 goes out;
	// dataCounted tells session.Data it was (see Server.beginData).
	beginData   func() bool
	dataCounted bool

	// data frames the message after a 354 (data.go): the session reads
	// its content, and go-smtp's own DATA reader is given only the end
	// (dataEnd) once the rest has been read or discarded.
	data    *dataReader
	dataEnd []byte
	bufs    *sync.Pool // DATA read buffers (nil: one per message)

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

// conn is what the client's bytes travel through: the TLS connection once
// a handshake completed, the TCP connection before.
func (c *trackedConn) conn() net.Conn {
	if t := c.tlsConn.Load(); t != nil {
		return t
	}
	return c.Conn
}

// tlsState is the connection's TLS state, for AUTH and the Received: header.
func (c *trackedConn) tlsState() (tls.ConnectionState, bool) {
	if t := c.tlsConn.Load(); t != nil {
		return t.ConnectionState(), true
	}
	return tls.ConnectionState{}, false
}

// Read watches the first bytes a client sends: an HTTP request or a TLS
// ClientHello on the plain SMTP port is answered once and the connection
// closed, instead of feeding binary or HTTP lines to the SMTP parser (which
// would answer each with an error). It also enforces the session's maximum
// life, runs an implicit-TLS handshake, frames commands (readCommand) and
// stands in for the message in DATA (data.go).
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
	if err := c.handshakeImplicit(); err != nil {
		return 0, err
	}
	if d := c.data; d != nil {
		// go-smtp reads the message after Session.Data returned: what
		// the session did not read is discarded, and go-smtp's reader
		// gets an empty message.
		c.data = nil
		if err := d.discard(); err != nil {
			return 0, err
		}
		c.dataEnd = []byte(".\r\n")
	}
	if len(c.dataEnd) > 0 {
		n := copy(p, c.dataEnd)
		c.dataEnd = c.dataEnd[n:]
		return n, nil
	}
	return c.readCommand(p)
}

// readConn reads from the client; the first bytes are checked for a
// foreign protocol.
func (c *trackedConn) readConn(p []byte) (int, error) {
	n, err := c.conn().Read(p)
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

// startTLS answers STARTTLS and runs the handshake on the TCP connection.
// What the client sent after the STARTTLS line, before the handshake, is
// discarded unread (RFC 3207 §4.2; the command injection of CVE-2011-0411):
// only what arrives over TLS is taken as commands.
func (c *trackedConn) startTLS(lineLen int) error {
	if extra := len(c.inbuf) - lineLen; extra > 0 {
		c.log.Info("discarded what the client sent after STARTTLS before TLS (RFC 3207 section 4.2)",
			zap.String("client", c.ip.String()), zap.Int("bytes", extra))
	}
	c.inbuf, c.readErr = nil, nil
	if _, err := c.Write([]byte("220 2.0.0 Ready to start TLS\r\n")); err != nil {
		return err
	}
	if c.closing.Load() != connOpen {
		return io.EOF
	}
	t := tls.Server(c.Conn, c.starttls)
	if err := c.handshake(t); err != nil {
		return err
	}
	c.needHelo = true
	return nil
}

// handshakeImplicit runs an implicit-TLS connection's handshake before its
// first read or write.
func (c *trackedConn) handshakeImplicit() error {
	t := c.implicit
	if t == nil {
		return nil
	}
	c.implicit = nil
	return c.handshake(t)
}

// handshake runs a TLS handshake under its own deadline. A failure (a
// plain-text client on the TLS port, an old protocol, a certificate the
// client refused) ends the connection: nothing can be said to the client
// in a language it understands.
func (c *trackedConn) handshake(t *tls.Conn) error {
	if c.handshakeTimeout > 0 {
		_ = c.Conn.SetDeadline(time.Now().Add(c.handshakeTimeout))
	}
	err := t.Handshake()
	_ = c.Conn.SetDeadline(time.Time{})
	if err != nil {
		c.log.Info("TLS handshake failed; connection closed", zap.String("client", c.ip.String()), zap.Error(err))
		c.closing.Store(connClosed)
		_ = c.Close()
		return io.EOF
	}
	c.tlsConn.Store(t)
	st := t.ConnectionState()
	c.log.Debug("TLS on", zap.String("client", c.ip.String()), zap.String("version", tls.VersionName(st.Version)),
		zap.String("cipher", tls.CipherSuiteName(st.CipherSuite)))
	return nil
}

func (c *trackedConn) writeAndClose(line string) {
	c.closing.Store(connClosed)
	if c.implicit == nil {
		// (Before an implicit-TLS handshake there is no one to tell.)
		_ = c.Conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
		_, _ = c.conn().Write([]byte(line))
	}
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

// Close closes the connection (through TLS when it is on, which sends
// close_notify) and gives back its slot.
func (c *trackedConn) Close() error {
	err := c.conn().Close()
	c.once.Do(func() { c.release(c.ip) })
	return err
}
