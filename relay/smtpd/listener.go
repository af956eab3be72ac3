package smtpd

import (
	"crypto/tls"
	"net"
	"net/netip"
	"sync"
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
