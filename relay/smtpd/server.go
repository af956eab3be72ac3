// Package smtpd owns the relay's intake: the SMTP listener that applications
// hand mail to, unauthenticated, and the rules a message must pass before it
// is accepted — the client's network, connection caps, sender policy, size,
// recipients, line endings, hop count.
//
// A message is acknowledged with 250 only after the Sink (the spool, or the
// spool and then Exchange) said so; every other outcome is a 4xx/5xx with an
// enhanced status code (RFC 3463), produced in one place by ForClient.
//
// Hostile or broken input is answered, never obeyed: the third syntax error,
// an HTTP request or TLS ClientHello on the plain port, a DATA phase past its
// deadline and a line past the limit each end the session with a reply, and
// nothing the client pipelined after that reply is acted on. A panic while
// serving one connection is recovered (session.contain), logged without its
// value, answered with 421 4.3.0 and ends only that connection.
//
// # TLS and local AUTH
//
// Several protections work on the bytes go-smtp reads and writes, in
// trackedConn below it (CHUNKING dropped from EHLO while BDAT is refused,
// the exact SIZE, the close after the third syntax error, the client's
// own MAIL/RCPT line for package address, the framing of DATA by RFC 5321
// in data.go). go-smtp's own STARTTLS would put a
// tls.Conn on top of trackedConn and leave it only ciphertext, so go-smtp
// is given no TLS configuration at all and trackedConn owns TLS:
//
//   - Implicit TLS (Options.ImplicitTLSAddr, RFC 8314 §3.3): the accepted
//     connection's handshake runs inside trackedConn at its first read or
//     write, under the command timeout; go-smtp sees plaintext.
//   - STARTTLS (RFC 3207): trackedConn puts STARTTLS into the EHLO reply
//     (in CHUNKING's place). Outside DATA it hands go-smtp one command line
//     per read, so it sees each line before go-smtp does and knows what
//     go-smtp has not read yet. It answers STARTTLS itself (220 2.0.0),
//     discards whatever the client sent after it in clear (§4.2;
//     CVE-2011-0411's command injection), handshakes on the TCP connection
//     and goes on presenting plaintext. go-smtp keeps its session and the
//     old EHLO name, so until the client greets again only EHLO, HELO,
//     NOOP, RSET and QUIT reach it (503 5.5.1 otherwise); the new EHLO
//     resets the transaction (go-smtp's reset, session.Reset), which is
//     the "discard prior knowledge" of §4.2. BDAT is refused at the same
//     layer, its chunk discarded as go-smtp would frame it, so go-smtp's
//     BDAT goroutine never runs, with or without TLS.
//
// The alternative — keeping go-smtp's STARTTLS and moving every rewrite
// into the session — is not possible: go-smtp offers no hook for the EHLO
// lines, its error counting, or its DATA reader. Because go-smtp cannot see
// TLS, AllowInsecureAuth is set and the session gates AUTH on trackedConn's
// TLS state (AUTH is offered only over TLS, 530 5.7.0 before it), and the
// Received: header's ESMTPS/ESMTPSA comes from the same state.
//
// With an Authenticator, AllowedNetworks means "may relay without AUTH":
// any other address may connect, and must authenticate before MAIL FROM
// (530 5.7.0). Without one it means "may connect at all" (554 5.7.1).
package smtpd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/reply"
	"github.com/o365relay/o365relay/relay/rewrite"
)

// Sink takes responsibility for an accepted message. Submit reads body to
// its end and returns only when the message is durable (or delivered); the
// returned text follows "250 2.0.0 " in the reply to the client. An error is
// turned into the client's reply by ForClient.
type Sink interface {
	Submit(ctx context.Context, env *envelope.Envelope, body io.Reader) (string, error)
}

// Router maps an envelope sender to the mailbox the relay will authenticate
// as; ok is false for a sender no rule covers, which gets SenderRefused's
// 550 5.7.1 naming the config key to change.
type Router func(sender string) (mailbox string, ok bool)

// Options configure a Server. Zero values take the documented defaults.
type Options struct {
	// Addr is the listen address, e.g. "127.0.0.1:2525".
	Addr string
	// AllowedNetworks lists the client networks that may relay without
	// AUTH; without Auth, nobody else may connect. Empty allows nobody
	// (without Auth) or requires AUTH of everyone (with it).
	AllowedNetworks []netip.Prefix
	// Hostname is our name in the greeting and the Received: header.
	Hostname string
	Sink     Sink
	Route    Router
	// Rewrite, if set, says how the sender's rule rewrites a message on
	// its way out; for rewrite.EnvelopeFrom the header section must fit
	// rewrite.MaxHeader, or the message is refused at intake.
	Rewrite func(sender string) rewrite.Mode

	MaxMessageBytes         int64         // default 35 MiB
	MaxRecipients           int           // default 500
	MaxConnections          int           // 0 = unlimited
	MaxConnectionsPerClient int           // 0 = unlimited
	CommandTimeout          time.Duration // default 1 min
	DataTimeout             time.Duration // whole DATA phase; default 10 min
	LineEndings             LineEndings
	MaxSessionDuration      time.Duration // whole connection; default 30 min

	// TLSConfig, if set, enables STARTTLS (RFC 3207) on Addr; it is
	// called at every handshake, so a certificate reloaded from disk
	// applies to the next connection. It may return nil while no
	// certificate is loaded (the handshake then fails).
	TLSConfig func() *tls.Config
	// ImplicitTLSAddr, if set, is a second listener that speaks TLS from
	// the first byte (RFC 8314 §3.3, port 465), with the same rules and
	// connection caps as Addr. It needs TLSConfig.
	ImplicitTLSAddr string
	// Auth, if set, offers AUTH PLAIN and LOGIN over TLS (never
	// without). It needs TLSConfig. With Auth, a client outside
	// AllowedNetworks may connect, and must authenticate before MAIL
	// (530 5.7.0); a client inside may relay without AUTH.
	Auth Authenticator
	// AuthFailureDelay is the least time a failed AUTH takes (default
	// 1s), the same for an unknown user and a wrong password.
	AuthFailureDelay time.Duration
	// MaxAuthFailures per client address in AuthFailureWindow (defaults
	// 5 and 15 min); beyond it AUTH is refused with 454 4.7.0 unchecked.
	MaxAuthFailures   int
	AuthFailureWindow time.Duration

	Logger *zap.Logger
	Clock  func() time.Time
	// OnRefused, if set, is called with a reason for each refused connection
	// (for metrics).
	OnRefused func(reason string)
}

// Server is the intake listener.
type Server struct {
	opts Options
	log  *zap.Logger
	smtp *smtp.Server

	mu       sync.Mutex
	lns      []*guardedListener // Addr's, then ImplicitTLSAddr's
	caps     *connCaps
	draining atomic.Bool
	inData   sync.WaitGroup
	// dataMu orders beginData against Shutdown's draining, so that no
	// session is counted into inData once Shutdown waits on it.
	dataMu  sync.Mutex
	baseCtx context.Context
	cancel  context.CancelFunc

	authLimit *authLimiter
}

// New checks opts and builds a server; it does not listen yet.
func New(opts Options) (*Server, error) {
	if opts.Sink == nil || opts.Route == nil {
		return nil, errors.New("smtpd: Sink and Route are required")
	}
	if opts.Hostname == "" {
		opts.Hostname = "localhost"
	}
	if opts.MaxMessageBytes == 0 {
		opts.MaxMessageBytes = 35 << 20
	}
	if opts.MaxRecipients == 0 {
		opts.MaxRecipients = 500
	}
	if opts.CommandTimeout == 0 {
		opts.CommandTimeout = time.Minute
	}
	if opts.DataTimeout == 0 {
		opts.DataTimeout = 10 * time.Minute
	}
	if opts.MaxSessionDuration == 0 {
		opts.MaxSessionDuration = 30 * time.Minute
	}
	if (opts.Auth != nil || opts.ImplicitTLSAddr != "") && opts.TLSConfig == nil {
		return nil, errors.New("smtpd: Auth and ImplicitTLSAddr need TLSConfig (AUTH is offered only over TLS)")
	}
	if opts.AuthFailureDelay == 0 {
		opts.AuthFailureDelay = time.Second
	}
	if opts.MaxAuthFailures == 0 {
		opts.MaxAuthFailures = 5
	}
	if opts.AuthFailureWindow == 0 {
		opts.AuthFailureWindow = 15 * time.Minute
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	s := &Server{opts: opts, log: opts.Logger, authLimit: &authLimiter{
		max: opts.MaxAuthFailures, window: opts.AuthFailureWindow, now: opts.Clock, fails: map[netip.Addr][]time.Time{},
	}}
	s.baseCtx, s.cancel = context.WithCancel(context.Background())

	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Addr = opts.Addr
	srv.Domain = opts.Hostname
	// go-smtp refuses a body of exactly MaxMessageBytes (its DATA reader
	// fails once the remaining allowance is zero, before it sees the end
	// of data); RFC 1870 §6 refuses only what exceeds the limit. So
	// go-smtp gets one more byte, and trackedConn.Write puts the real limit
	// back into the EHLO SIZE line; Mail checks SIZE= against it.
	srv.MaxMessageBytes = opts.MaxMessageBytes + 1
	srv.MaxRecipients = opts.MaxRecipients
	// RFC 5321 §4.5.3.1.4: 512 octets for a command line; go-smtp's 2000
	// covers that and long ESMTP parameter lists. DATA lines are limited
	// separately (RFC 5321 §4.5.3.1.6: 1000 octets SHOULD be accepted) —
	// go-smtp applies the same reader, so keep room for the 998-byte lines
	// RFC 5322 allows.
	srv.MaxLineLength = 2000
	srv.ReadTimeout = opts.CommandTimeout
	srv.WriteTimeout = opts.CommandTimeout
	srv.EnableSMTPUTF8 = true
	srv.ErrorLog = zapPrintf{s.log}
	// go-smtp gets no TLSConfig: TLS is trackedConn's (package comment),
	// so go-smtp cannot tell a TLS session from a plain one and would
	// answer AUTH with "523 TLS is required" everywhere. AllowInsecureAuth
	// only lets AUTH through to the session, whose AuthMechanisms and Auth
	// refuse it without TLS.
	srv.AllowInsecureAuth = true
	s.smtp = srv
	return s, nil
}

// Listen binds the address; Serve must follow. Splitting the two lets the
// daemon report "listening" (systemd READY=1) only once the port is held.
func (s *Server) Listen() error {
	var tlsCfg *tls.Config
	if s.opts.TLSConfig != nil {
		tlsCfg = tlsConfigFor(s.opts.TLSConfig)
	}
	caps := &connCaps{perIP: map[netip.Addr]int{}}
	bufs := newDataBufs()
	mk := func(addr string, implicit bool) (*guardedListener, error) {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", addr, err)
		}
		return &guardedListener{
			Listener: l, allowed: s.opts.AllowedNetworks,
			maxTotal: s.opts.MaxConnections, maxPerIP: s.opts.MaxConnectionsPerClient,
			log: s.log, onRefused: s.opts.OnRefused, connCaps: caps, beginData: s.beginData,
			dataBufs:    bufs,
			maxSession:  s.opts.MaxSessionDuration,
			implicitTLS: implicit, tlsConfig: tlsCfg, handshakeTimeout: s.opts.CommandTimeout,
			authAvailable: s.opts.Auth != nil,
			sizeLine: [2][]byte{
				[]byte(fmt.Sprintf("250-SIZE %d\r\n", s.opts.MaxMessageBytes+1)),
				[]byte(fmt.Sprintf("250-SIZE %d\r\n", s.opts.MaxMessageBytes)),
			},
		}, nil
	}
	plain, err := mk(s.opts.Addr, false)
	if err != nil {
		return err
	}
	lns := []*guardedListener{plain}
	if s.opts.ImplicitTLSAddr != "" {
		impl, err := mk(s.opts.ImplicitTLSAddr, true)
		if err != nil {
			if cerr := plain.Listener.Close(); cerr != nil {
				err = errors.Join(err, cerr)
			}
			return err
		}
		lns = append(lns, impl)
	}
	s.mu.Lock()
	s.lns, s.caps = lns, caps
	s.mu.Unlock()
	return nil
}

// Addr returns the bound address (after Listen).
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.lns) == 0 {
		return nil
	}
	return s.lns[0].Addr()
}

// ImplicitTLSAddr returns the implicit-TLS listener's bound address, or nil.
func (s *Server) ImplicitTLSAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.lns) < 2 {
		return nil
	}
	return s.lns[1].Addr()
}

// Serve accepts connections on every listener until Shutdown; it returns
// nil after a clean shutdown. If one listener fails, the others are closed
// and its error returned.
func (s *Server) Serve() error {
	s.mu.Lock()
	lns := s.lns
	s.mu.Unlock()
	if len(lns) == 0 {
		return errors.New("smtpd: Serve before Listen")
	}
	errc := make(chan error, len(lns))
	for _, ln := range lns {
		go func() { errc <- s.smtp.Serve(ln) }()
	}
	var err error
	for i := range lns {
		e := <-errc
		if i == 0 {
			err = e
			for _, ln := range lns {
				_ = ln.Listener.Close()
			}
		}
	}
	if err == nil || errors.Is(err, smtp.ErrServerClosed) || s.draining.Load() {
		return nil
	}
	return err
}

// Shutdown stops accepting connections, answers new transactions with
// "421 4.3.2", waits for sessions that are inside DATA to finish (their
// message is being made durable) until ctx is done, then closes every
// connection. A session cut off here never got a 250, so nothing
// acknowledged is lost.
func (s *Server) Shutdown(ctx context.Context) error {
	s.dataMu.Lock()
	s.draining.Store(true)
	s.dataMu.Unlock()
	s.mu.Lock()
	lns := s.lns
	s.mu.Unlock()
	for _, ln := range lns {
		// Stop accepting at once; go-smtp's Close below closes it again.
		_ = ln.Listener.Close()
	}
	done := make(chan struct{})
	go func() { s.inData.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = fmt.Errorf("smtpd: sessions still in DATA at shutdown deadline: %w", ctx.Err())
	}
	// Cancel the sink's context so a stuck Submit returns (with a 4xx).
	s.cancel()
	if cerr := s.smtp.Close(); cerr != nil && !errors.Is(cerr, smtp.ErrServerClosed) && !isClosedErr(cerr) {
		err = errors.Join(err, cerr)
	}
	return err
}

func isClosedErr(err error) bool { return errors.Is(err, net.ErrClosed) }

// beginData counts a session into DATA, which Shutdown waits for, unless
// the server is draining. trackedConn calls it as go-smtp writes 354, so a
// client that heard 354 is always waited for; counting only once
// session.Data runs left a window in which Shutdown closed the connection
// under go-smtp (which then called Data on a nil session).
func (s *Server) beginData() bool {
	s.dataMu.Lock()
	defer s.dataMu.Unlock()
	if s.draining.Load() {
		return false
	}
	s.inData.Add(1)
	return true
}

var errShuttingDown = reply.New(421, reply.EnhancedCode{4, 3, 2}, "Service shutting down, try again later")

func (s *Server) newSession(c *smtp.Conn) (sess smtp.Session, err error) {
	tc := connOf(c.Conn())
	defer func() {
		if v := recover(); v != nil {
			var ip netip.Addr
			if tc != nil {
				ip = tc.ip
				tc.closeAfterReply()
			}
			logPanic(s.log, v, ip, "EHLO")
			sess, err = nil, ForClient(errPanic)
		}
	}()
	if tc != nil && tc.closing.Load() != connOpen {
		return nil, ForClient(errClosed)
	}
	if s.draining.Load() {
		return nil, ForClient(errShuttingDown)
	}
	ss := &session{srv: s, conn: c, tc: tc}
	if tc != nil {
		ss.clientIP = tc.ip
	}
	return ss, nil
}

// logPanic logs a recovered panic. Its value is logged only when it is a
// runtime error (index out of range, nil dereference: the runtime's own
// words); any other value may be a string or error built from message data
// or a credential (secrets never reach a log), so only its type is. The stack names
// functions and holds argument words, not the bytes they point to.
func logPanic(log *zap.Logger, v any, client netip.Addr, where string) {
	val := fmt.Sprintf("%T (value withheld: it may hold message data)", v)
	if re, ok := v.(runtime.Error); ok {
		val = re.Error()
	}
	log.Error("panic contained; connection closed with 421 4.3.0", zap.String("client", client.String()),
		zap.String("during", where), zap.String("panic", val), zap.String("stack", string(debug.Stack())))
}

// zapPrintf adapts zap to go-smtp's Logger. go-smtp logs accept errors and
// the panics it recovers here; a panic goes through logPanic so its value
// is withheld.
type zapPrintf struct{ l *zap.Logger }

func (z zapPrintf) Printf(format string, v ...interface{}) {
	if strings.HasPrefix(format, "panic serving") && len(v) >= 2 {
		var ip netip.Addr
		if a, ok := v[0].(net.Addr); ok {
			if ap, err := netip.ParseAddrPort(a.String()); err == nil {
				ip = ap.Addr().Unmap()
			}
		}
		logPanic(z.l, v[1], ip, "a go-smtp command handler")
		return
	}
	z.l.Warn(fmt.Sprintf(format, v...))
}

func (z zapPrintf) Println(v ...interface{}) { z.l.Warn(fmt.Sprint(v...)) }
