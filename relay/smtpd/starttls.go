package smtpd

import (
	"crypto/tls"
	"io"
	"time"

	"go.uber.org/zap"
)

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
