package smtpd

import (
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

	"github.com/o365relay/o365relay/relay/reply"
)

// Listener TLS and local AUTH, for a relay that listens beyond loopback.
// Nothing here is reachable unless Options.TLSConfig (and, for AUTH,
// Options.Auth) is set: the config's listen_tls_cert and auth_users.

// Authenticator checks local AUTH credentials (PLAIN, LOGIN) and says which
// senders an authenticated user may use.
type Authenticator interface {
	// Authenticate returns nil if password is user's. It must cost the
	// same for an unknown user as for a wrong password (compare against a
	// fixed dummy hash when the user is unknown), so that timing does not
	// tell which users exist; the session pads every failure to
	// Options.AuthFailureDelay on top. Its error is logged, never sent, and
	// must not contain the password.
	Authenticate(user, password string) error
	// MaySend reports whether user may give sender in MAIL FROM.
	MaySend(user, sender string) bool
}

var (
	// RFC 4954 §6: 535 5.7.8 "Authentication credentials invalid".
	errAuthFailed = reply.New(535, reply.EnhancedCode{5, 7, 8}, "Authentication credentials invalid")
	// RFC 4954 §6 allows 454 4.7.0 for a temporary authentication
	// failure: the client may try again later, from this address.
	errAuthLimited = reply.New(454, reply.EnhancedCode{4, 7, 0},
		"Too many failed authentication attempts from your address; try again later")
	// X.7.1 (RFC 3463): delivery not authorized, the same code as for a
	// sender no routing rule covers.
	errSenderNotAllowed = reply.New(550, reply.EnhancedCode{5, 7, 1}, "Sender address not allowed for the authenticated user")
	// RFC 4954 §6: 530 5.7.0 "Authentication required".
	errAuthRequired = reply.New(530, reply.EnhancedCode{5, 7, 0},
		"Authentication required: your address is not in allowed_networks; use STARTTLS and AUTH")
	// RFC 3207 §4: 530 5.7.0 "Must issue a STARTTLS command first".
	errNeedTLS = reply.New(530, reply.EnhancedCode{5, 7, 0}, "Must issue a STARTTLS command first")
)

// authLimiter counts failed AUTH attempts per client address in a sliding
// window; past the limit, AUTH is refused without consulting the
// Authenticator.
type authLimiter struct {
	max    int
	window time.Duration
	now    func() time.Time

	mu    sync.Mutex
	fails map[netip.Addr][]time.Time
}

func (l *authLimiter) blocked(ip netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.prune(ip)) >= l.max
}

func (l *authLimiter) fail(ip netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.fails[ip] = append(l.prune(ip), l.now())
}

// prune drops failures older than the window (and the entry, when empty,
// so the map does not grow with every address ever seen). l.mu is held.
func (l *authLimiter) prune(ip netip.Addr) []time.Time {
	ts := l.fails[ip]
	cut := l.now().Add(-l.window)
	i := 0
	for i < len(ts) && !ts[i].After(cut) {
		i++
	}
	ts = ts[i:]
	if len(ts) == 0 {
		delete(l.fails, ip)
		return nil
	}
	l.fails[ip] = ts
	return ts
}

// tlsConfigFor builds go-smtp's TLS configuration from a getter, asked at
// every handshake so a reloaded certificate takes effect for the next
// connection.
func tlsConfigFor(get func() *tls.Config) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			c := get()
			if c == nil {
				return nil, errors.New("smtpd: no TLS certificate loaded")
			}
			return c, nil
		},
	}
}

// tlsState is the session's TLS state. trackedConn owns TLS (go-smtp's
// Conn never sees it), so go-smtp's TLSConnectionState is only asked when
// the connection is not one of ours.
func (s *session) tlsState() (tls.ConnectionState, bool) {
	if s.tc != nil {
		return s.tc.tlsState()
	}
	return s.conn.TLSConnectionState()
}

// connOf finds the trackedConn under go-smtp's connection (below a
// *tls.Conn, were go-smtp ever to put one on top of it).
func connOf(c net.Conn) *trackedConn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	t, _ := c.(*trackedConn)
	return t
}

// AuthMechanisms implements smtp.AuthSession: AUTH is offered only over
// TLS (RFC 4954 §4: a server SHOULD NOT offer plaintext mechanisms
// without it), and only when an Authenticator is configured.
func (s *session) AuthMechanisms() []string {
	if s.srv.opts.Auth == nil {
		return nil
	}
	if _, isTLS := s.tlsState(); !isTLS {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

// Auth implements smtp.AuthSession.
func (s *session) Auth(mech string) (sasl.Server, error) {
	if s.srv.opts.Auth == nil {
		return nil, smtp.ErrAuthUnsupported
	}
	if _, isTLS := s.tlsState(); !isTLS {
		// The credentials (if the client sent an initial response) have
		// crossed the network in clear; they are neither checked nor
		// logged.
		return nil, ForClient(errNeedTLS)
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, user, pass string) error {
			if identity != "" && identity != user {
				return s.authFailed(user, errors.New("authorization identity differs from the user"))
			}
			return s.authenticate(user, pass)
		}), nil
	case sasl.Login:
		return &loginServer{check: s.authenticate}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// authenticate checks one attempt. Every failure — unknown user, wrong
// password, an address over the failure limit — takes at least
// AuthFailureDelay from the start of the check and gets the same kind of
// reply, so neither timing nor text tells them apart.
func (s *session) authenticate(user, pass string) (err error) {
	defer s.contain(&err, "AUTH")
	start := time.Now()
	lim := s.srv.authLimit
	if lim.blocked(s.clientIP) {
		s.pad(start)
		s.srv.log.Warn("AUTH refused: too many failures from this address", zap.String("client", s.clientIP.String()))
		return ForClient(errAuthLimited)
	}
	if aerr := s.srv.opts.Auth.Authenticate(user, pass); aerr != nil {
		lim.fail(s.clientIP)
		s.pad(start)
		return s.authFailed(user, aerr)
	}
	s.authUser = user
	s.srv.log.Info("client authenticated", zap.String("client", s.clientIP.String()), zap.String("user", user))
	return nil
}

func (s *session) authFailed(user string, cause error) error {
	s.srv.log.Warn("AUTH failed", zap.String("client", s.clientIP.String()), zap.String("user", user), zap.Error(cause))
	return ForClient(errAuthFailed)
}

func (s *session) pad(start time.Time) {
	if d := s.srv.opts.AuthFailureDelay - time.Since(start); d > 0 {
		time.Sleep(d)
	}
}

// loginServer is the server side of the LOGIN mechanism
// (draft-murchison-sasl-login): it asks for "Username:" and "Password:";
// go-sasl has only the client side. A client may send the user name as the
// initial response.
type loginServer struct {
	check func(user, pass string) error
	user  string
	step  int
}

func (l *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch l.step {
	case 0:
		l.step = 1
		if response == nil {
			return []byte("Username:"), false, nil
		}
		fallthrough
	case 1:
		l.user, l.step = string(response), 2
		return []byte("Password:"), false, nil
	case 2:
		l.step = 3
		return nil, true, l.check(l.user, string(response))
	}
	return nil, true, sasl.ErrUnexpectedClientResponse
}
