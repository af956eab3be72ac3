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

// writeAndClose sends the connection's last reply (none before an
// implicit-TLS handshake: the client could not read it) and closes it.
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

// Close closes the connection (through TLS when it is on, which sends
// close_notify) and gives back its slot.
func (c *trackedConn) Close() error {
	err := c.conn().Close()
	c.once.Do(func() { c.release(c.ip) })
	return err
}
