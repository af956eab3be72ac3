// Package exchangetest owns a strict fake of Exchange Online's SMTP client
// submission endpoint (smtp.office365.com:587), for the upstream client's
// tests, end-to-end tests and the demo. It is ordinary non-test code (no
// "testing" import) so the demo binary can embed it.
//
// It behaves like the observed service (docs/exchange.md: The session, Replies, Limits):
// STARTTLS is offered, AUTH XOAUTH2 only after TLS, the bearer token is
// verified like Exchange would (RS256 signature by the fake Entra ID's key,
// exp/nbf, aud = the Exchange resource, tid, roles ∋ SMTP.SendAsApp, and the
// app holding FullAccess on the user= mailbox — or, for a token without the
// role, an RBAC for Applications assignment covering the mailbox), MAIL FROM is checked against
// the mailbox and its Send-As grants, the From: header is checked after DATA
// (554 5.2.252 SendAsDenied), and more than three concurrently authenticated
// connections per mailbox get 432 4.3.2. Everything the client does wrong
// that a real server might tolerate (credentials before TLS, a lowercase
// mechanism name, an AUTH line longer than RFC 5321's 1000 octets) is
// recorded in Violations so tests can assert there are none.
//
// Faults (Inject) and outages (SetDown) are scriptable so retry
// classification can be tested against the real wire protocol.
package exchangetest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/mail"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"
)

// Hostname is the name the fake announces and puts in its replies.
const Hostname = "fake.exchangetest"

// Audiences Exchange Online accepts in an access token for SMTP: the
// resource URI and the Office 365 Exchange Online application ID
// (docs/exchange.md#xoauth2).
const (
	AudienceResource = "https://outlook.office365.com"
	AudienceAppID    = "00000002-0000-0ff1-ce00-000000000000"
)

// RoleSendAsApp is the application permission SMTP AUTH with client
// credentials needs (docs/azure.md#step-2-smtpsendasapp-and-admin-consent).
const RoleSendAsApp = "SMTP.SendAsApp"

// Stages at which a Fault can fire.
const (
	StageConnect  = "connect"  // before the greeting: reply (e.g. 421, 554) and close, or drop
	StageEHLO     = "ehlo"     // the next EHLO (the pre-TLS one on a new connection)
	StageSTARTTLS = "starttls" // reply to STARTTLS (then close), or drop
	// StageNoSTARTTLS: the session's EHLO does not offer STARTTLS (as
	// when a middlebox strips it). Counted per session.
	StageNoSTARTTLS = "nostarttls"
	// StageTLS: after "220" to STARTTLS, serve Fault.Certificate in the
	// handshake (one the client must not trust), or close (Drop).
	StageTLS = "tls"
	// StageNoXOAUTH2: the session's EHLO after TLS offers AUTH LOGIN
	// only. Counted per session.
	StageNoXOAUTH2 = "noxoauth2"
	StageAuth      = "auth" // reply to AUTH instead of the challenge
	StageMail      = "mail" // reply to MAIL FROM
	StageRcpt      = "rcpt" // reply to RCPT TO (optionally one recipient)
	StageData      = "data" // Drop: close mid-body; Reply: refuse the data (sent after the dot, see Data)
	StageDot       = "dot"  // after the whole body was read: final reply, or drop without one
)

// Mailbox is one Exchange Online mailbox an app may send as.
type Mailbox struct {
	// Apps are app (client) IDs granted FullAccess on the mailbox
	// (Add-MailboxPermission, Azure step 6: docs/azure.md#step-6-add-mailboxpermission).
	Apps []string
	// SendAs are further From addresses the mailbox may use.
	SendAs []string
	// AuthDisabled models Set-CASMailbox -SmtpClientAuthenticationDisabled
	// $true: every AUTH gets 535 5.7.139.
	AuthDisabled bool
	// SendAsAny lets the mailbox send as any address, so tests of the
	// envelope can use any sender.
	SendAsAny bool
	// RBACApps are app (client) IDs holding Exchange "RBAC for
	// Applications" (New-ManagementRoleAssignment -Role 'Application
	// SMTP.SendAsApp') with a management scope that contains this mailbox
	// (Microsoft's SMTP AUTH with RBAC for Applications;
	// docs/azure.md#rbac-for-applications). Their tokens
	// carry no SMTP.SendAsApp role and need no FullAccess; a token that
	// does carry the role is checked for FullAccess as usual.
	RBACApps []string
}

// Options configures a Server.
type Options struct {
	// TLS is the certificate served after STARTTLS. Required unless
	// NoSTARTTLS.
	TLS tls.Certificate
	// NoSTARTTLS makes a server that never offers STARTTLS (and therefore
	// never AUTH): a misconfigured or intercepting endpoint.
	NoSTARTTLS bool
	// NoPipelining leaves PIPELINING (RFC 2920) out of EHLO, so a client
	// sends one command at a time.
	NoPipelining bool
	// TokenKey verifies access tokens (the fake Entra ID's signing key).
	TokenKey *rsa.PublicKey
	// Tenant is the expected tid claim.
	Tenant string
	// Mailboxes by address (matched case-insensitively).
	Mailboxes map[string]Mailbox
	// Clock checks exp/nbf; nil means time.Now.
	Clock func() time.Time
	// Logger gets protocol events (never tokens or bodies); nil discards.
	Logger *zap.Logger
	// Discard keeps only the size and SHA-256 of message data, for load
	// tests that would otherwise hold gigabytes.
	Discard bool
	// MaxConcurrentPerMailbox authenticated connections; default 3
	// (docs/exchange.md#connections-per-mailbox).
	MaxConcurrentPerMailbox int
	// JSONErrorChallenge makes a rejected XOAUTH2 response get Google's
	// error challenge (334 + base64 JSON) before the 535, as some servers
	// do (docs/exchange.md#xoauth2); the client must answer with an empty
	// line.
	JSONErrorChallenge bool
	// ReadTimeout and WriteTimeout of the go-smtp server; defaults 5 min
	// (Exchange receive connectors' inactivity timeout,
	// docs/exchange.md#idle-and-session-timeouts) and 1 min.
	ReadTimeout, WriteTimeout time.Duration
}

// Message is one message the fake accepted.
type Message struct {
	MailFrom string
	RcptTo   []string
	AuthUser string // XOAUTH2 user=
	AppID    string // the token's appid
	Data     []byte // exact bytes after dot-unstuffing; nil with Options.Discard
	Size     int64
	SHA256   [sha256.Size]byte
	TLS      bool
	Session  int // connection number, from 1
	SMTPUTF8 bool
	BodyType smtp.BodyType // BODY= parameter of MAIL
	// MessageID is the Message-ID header field's value ("" if none) and
	// Accepted the wall-clock time the 250 was decided, so a load
	// generator can measure each message's delivery latency by its ID.
	MessageID string
	Accepted  time.Time
	// From and To are the paths as the fake parsed the client's MAIL and
	// RCPT lines (ParseCommand), MailParams and RcptParams their
	// parameters in the order sent. MailFrom and RcptTo are their
	// Mailbox() strings.
	From       Path
	To         []Path
	MailParams []Param
	RcptParams [][]Param
}

// Stats counts what the fake saw since start or Reset.
type Stats struct {
	Sessions      int // TCP connections that got a greeting
	TLSSessions   int // connections that completed STARTTLS
	Auths         int // successful AUTH
	AuthFailures  int // AUTH answered 4xx/5xx
	AuthBeforeTLS int // AUTH attempted on a plaintext connection
	// MaxConcurrentPerMailbox is the highest number of simultaneously
	// authenticated connections seen per mailbox (refused AUTHs excluded).
	MaxConcurrentPerMailbox map[string]int
}

// Fault is a scripted failure. Faults are kept in a queue; at each stage the
// first queued fault for that stage (and recipient, if Rcpt is set) fires and
// is removed after Times uses (0 means once).
type Fault struct {
	Stage string
	Reply *smtp.SMTPError
	Drop  bool   // close the TCP connection instead of replying
	Rcpt  string // StageRcpt only: fire only for this recipient
	Times int
	// Certificate is served in the TLS handshake (StageTLS only).
	Certificate *tls.Certificate
}

// Server is a running fake. It is safe for concurrent use.
type Server struct {
	opts      Options
	clock     func() time.Time
	log       *zap.Logger
	srv       *smtp.Server
	tlsConfig *tls.Config // nil with NoSTARTTLS
	ln        net.Listener
	done      chan struct{} // closed when Serve returned
	serveErr  error

	mailboxes map[string]mailboxEntry

	down    atomic.Bool
	session atomic.Int64
	msgID   atomic.Int64

	mu         sync.Mutex
	cond       *sync.Cond
	faults     []*Fault
	messages   []Message
	stats      Stats
	active     map[string]int
	violations []string
}

type mailboxEntry struct {
	addr   string
	apps   map[string]bool
	rbac   map[string]bool
	sendAs map[string]bool
	mb     Mailbox
}

// NewServer starts a fake on 127.0.0.1 with an ephemeral port.
func NewServer(opts Options) (*Server, error) {
	if !opts.NoSTARTTLS && len(opts.TLS.Certificate) == 0 {
		return nil, errors.New("exchangetest: Options.TLS is required (or set NoSTARTTLS)")
	}
	if opts.TokenKey == nil {
		return nil, errors.New("exchangetest: Options.TokenKey is required")
	}
	if opts.MaxConcurrentPerMailbox <= 0 {
		opts.MaxConcurrentPerMailbox = 3
	}
	if opts.ReadTimeout <= 0 {
		opts.ReadTimeout = 5 * time.Minute
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = time.Minute
	}
	s := &Server{
		opts:      opts,
		clock:     opts.Clock,
		log:       opts.Logger,
		done:      make(chan struct{}),
		mailboxes: make(map[string]mailboxEntry),
		active:    make(map[string]int),
	}
	s.cond = sync.NewCond(&s.mu)
	s.stats.MaxConcurrentPerMailbox = make(map[string]int)
	if s.clock == nil {
		s.clock = time.Now
	}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	for addr, mb := range opts.Mailboxes {
		e := mailboxEntry{addr: strings.ToLower(addr), apps: map[string]bool{}, rbac: map[string]bool{}, sendAs: map[string]bool{}, mb: mb}
		for _, a := range mb.Apps {
			e.apps[strings.ToLower(a)] = true
		}
		for _, a := range mb.RBACApps {
			e.rbac[strings.ToLower(a)] = true
		}
		e.sendAs[e.addr] = true
		for _, a := range mb.SendAs {
			e.sendAs[strings.ToLower(a)] = true
		}
		s.mailboxes[e.addr] = e
	}

	srv := smtp.NewServer(backend{s})
	srv.Domain = Hostname
	// Exchange advertises SIZE 157286400 (150 MiB, docs/exchange.md#message-size).
	srv.MaxMessageBytes = 150 << 20
	// XOAUTH2 continuation lines carry a 1.5–3 KB token base64-encoded;
	// go-smtp's default 2000 would cut them off (docs/exchange.md#xoauth2).
	srv.MaxLineLength = 16384
	srv.MaxRecipients = 500
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	srv.ReadTimeout = opts.ReadTimeout
	srv.WriteTimeout = opts.WriteTimeout
	// AUTH is refused on plaintext by our own session (530 5.7.0, like
	// Exchange) rather than by go-smtp (523), so that a client sending
	// credentials before TLS is seen and recorded as a violation.
	srv.AllowInsecureAuth = true
	srv.ErrorLog = zapLogger{s.log}
	// go-smtp gets no TLSConfig: faultConn runs STARTTLS underneath it
	// (wire.go), so that the fake sees the client's plaintext.
	if !opts.NoSTARTTLS {
		s.tlsConfig = &tls.Config{Certificates: []tls.Certificate{opts.TLS}, MinVersion: tls.VersionTLS12}
	}
	s.srv = srv

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("exchangetest: listen: %w", err)
	}
	s.ln = ln
	go func() {
		// Owned by the Server: Close stops it and waits on s.done.
		defer close(s.done)
		s.serveErr = srv.Serve(&listener{Listener: ln, s: s})
	}()
	return s, nil
}

// Addr is host:port to dial.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops the server and closes every connection.
func (s *Server) Close() error {
	err := s.srv.Close()
	if errors.Is(err, smtp.ErrServerClosed) {
		err = nil
	}
	// go-smtp closes only listeners Serve has registered; if Close races
	// with the start of Serve, ours would stay open and Serve never end.
	if lerr := s.ln.Close(); lerr != nil && !errors.Is(lerr, net.ErrClosed) {
		err = errors.Join(err, lerr)
	}
	<-s.done
	return errors.Join(err, s.serveErr)
}

// SetDown(true) makes the fake close every new connection immediately, as
// an outage would; SetDown(false) restores service.
func (s *Server) SetDown(down bool) { s.down.Store(down) }

// Inject queues a fault.
func (s *Server) Inject(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f.Times <= 0 {
		f.Times = 1
	}
	s.faults = append(s.faults, &f)
}

// PendingFaults is the number of injected fault uses that have not fired
// yet, so a test can tell that the fault it injected was exercised.
func (s *Server) PendingFaults() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, f := range s.faults {
		n += f.Times
	}
	return n
}

// Reset clears recorded messages, counters, violations and pending faults.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.messages = nil
	s.faults = nil
	s.violations = nil
	s.stats = Stats{MaxConcurrentPerMailbox: make(map[string]int)}
}

// Messages returns a copy of the accepted messages in order of acceptance.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.messages...)
}

// WaitMessages blocks until at least n messages were accepted or ctx ends.
func (s *Server) WaitMessages(ctx context.Context, n int) error {
	stop := context.AfterFunc(ctx, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.cond.Broadcast()
	})
	defer stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.messages) < n {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("exchangetest: have %d of %d messages: %w", len(s.messages), n, err)
		}
		s.cond.Wait()
	}
	return nil
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.MaxConcurrentPerMailbox = make(map[string]int, len(s.stats.MaxConcurrentPerMailbox))
	for k, v := range s.stats.MaxConcurrentPerMailbox {
		st.MaxConcurrentPerMailbox[k] = v
	}
	return st
}

// Violations lists protocol violations the clients made: credentials on a
// plaintext connection, a mechanism name not in upper case, an AUTH line
// longer than RFC 5321 §4.5.3.1.4 allows, a malformed XOAUTH2 response.
func (s *Server) Violations() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.violations...)
}

// PlainAuthAttempts is the number of AUTH commands seen before STARTTLS.
func (s *Server) PlainAuthAttempts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats.AuthBeforeTLS
}

func (s *Server) violation(format string, args ...any) {
	v := fmt.Sprintf(format, args...)
	s.log.Warn("client protocol violation", zap.String("violation", v))
	s.mu.Lock()
	defer s.mu.Unlock()
	s.violations = append(s.violations, v)
}

// take returns the first queued fault for stage (and rcpt), consuming one use.
func (s *Server) take(stage, rcpt string) *Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, f := range s.faults {
		if f.Stage != stage {
			continue
		}
		if stage == StageRcpt && f.Rcpt != "" && !strings.EqualFold(f.Rcpt, rcpt) {
			continue
		}
		f.Times--
		if f.Times <= 0 {
			s.faults = append(s.faults[:i:i], s.faults[i+1:]...)
		}
		out := *f
		return &out
	}
	return nil
}

func replyLine(e *smtp.SMTPError) []byte {
	if e.EnhancedCode == smtp.NoEnhancedCode {
		return fmt.Appendf(nil, "%d %s\r\n", e.Code, e.Message)
	}
	enh := e.EnhancedCode
	if enh == smtp.EnhancedCodeNotSet {
		enh = smtp.EnhancedCode{e.Code / 100, 0, 0}
	}
	return fmt.Appendf(nil, "%d %d.%d.%d %s\r\n", e.Code, enh[0], enh[1], enh[2], e.Message)
}

type zapLogger struct{ l *zap.Logger }

func (z zapLogger) Printf(format string, v ...any) { z.l.Debug(fmt.Sprintf(format, v...)) }
func (z zapLogger) Println(v ...any)               { z.l.Debug(fmt.Sprintln(v...)) }

type backend struct{ s *Server }

func (b backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	s := b.s
	fc, ok := c.Conn().(*faultConn)
	if !ok {
		return nil, errors.New("exchangetest: unexpected connection type")
	}
	if f := s.take(StageEHLO, ""); f != nil {
		return nil, s.fire(fc, f)
	}
	return &session{s: s, fc: fc}, nil
}

// fire applies a fault: drops the connection or returns its reply.
func (s *Server) fire(fc *faultConn, f *Fault) error {
	if f.Drop || f.Reply == nil {
		if err := fc.Close(); err != nil {
			s.log.Debug("close dropped connection", zap.Error(err))
		}
		return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "connection dropped (fault)"}
	}
	return f.Reply
}

type session struct {
	s  *Server
	fc *faultConn

	mailbox string // authenticated mailbox, "" before AUTH
	appID   string

	from       Path
	rcpts      []Path
	mailParams []Param
	rcptParams [][]Param
	utf8       bool
	body       smtp.BodyType
}

var _ smtp.AuthSession = (*session)(nil)

func (ss *session) AuthMechanisms() []string {
	// Exchange lists AUTH only after STARTTLS (docs/exchange.md#tls).
	if !ss.fc.isTLS() {
		return nil
	}
	if ss.fc.noXOAUTH2 {
		return []string{"LOGIN"}
	}
	return []string{"XOAUTH2"}
}

var (
	errMustStartTLS = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Must issue a STARTTLS command first"}
	errAuthFailed   = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 3}, Message: "Authentication unsuccessful [fake]"}
	errAuthDisabled = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139}, Message: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox"}
	errUnknownMech  = &smtp.SMTPError{Code: 504, EnhancedCode: smtp.EnhancedCode{5, 7, 4}, Message: "Unrecognized authentication type"}
	errConcurrent   = &smtp.SMTPError{Code: 432, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Concurrent connections limit exceeded"}
	errNotAuthed    = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 57}, Message: "Client not authenticated to send mail"}
	errSendAsEnv    = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 60}, Message: "SMTP; Client does not have permissions to send as this sender"}
)

func (ss *session) Auth(mech string) (sasl.Server, error) {
	s := ss.s
	if !ss.fc.isTLS() {
		s.mu.Lock()
		s.stats.AuthBeforeTLS++
		s.stats.AuthFailures++
		s.mu.Unlock()
		// Return a server so that an initial response, if the client sent
		// one, is seen: that is a credential on a plaintext connection.
		return saslFunc(func(resp []byte) ([]byte, bool, error) {
			if len(resp) > 0 {
				s.violation("credentials sent on a plaintext connection (AUTH %s before STARTTLS)", mech)
			}
			return nil, true, errMustStartTLS
		}), nil
	}
	if mech != "XOAUTH2" || ss.fc.noXOAUTH2 {
		ss.authFailed()
		return nil, errUnknownMech
	}
	if f := s.take(StageAuth, ""); f != nil {
		ss.authFailed()
		return nil, s.fire(ss.fc, f)
	}
	first := true
	var pending *smtp.SMTPError
	return saslFunc(func(resp []byte) ([]byte, bool, error) {
		if resp == nil && first {
			// Two-step form: Microsoft's example answers "334 " (docs/exchange.md#xoauth2).
			first = false
			return []byte{}, false, nil
		}
		if pending != nil {
			// Answer to the JSON error challenge: must be empty.
			if len(resp) != 0 {
				s.violation("non-empty response to an XOAUTH2 error challenge")
			}
			err := pending
			pending = nil
			return nil, true, err
		}
		if err := ss.checkXOAuth2(resp); err != nil {
			ss.authFailed()
			if s.opts.JSONErrorChallenge && err.Code == 535 {
				pending = err
				return []byte(`{"status":"401","schemes":"bearer","scope":"https://outlook.office365.com/.default"}`), false, nil
			}
			return nil, true, err
		}
		return nil, true, nil
	}), nil
}

func (ss *session) authFailed() {
	ss.s.mu.Lock()
	defer ss.s.mu.Unlock()
	ss.s.stats.AuthFailures++
}

type saslFunc func([]byte) ([]byte, bool, error)

func (f saslFunc) Next(resp []byte) ([]byte, bool, error) { return f(resp) }

// checkXOAuth2 validates "user=U\x01auth=Bearer T\x01\x01"
// (docs/exchange.md#xoauth2) and the
// token as Exchange would, then applies the concurrency limit.
func (ss *session) checkXOAuth2(resp []byte) *smtp.SMTPError {
	s := ss.s
	parts := strings.Split(string(resp), "\x01")
	if len(parts) != 4 || parts[2] != "" || parts[3] != "" ||
		!strings.HasPrefix(parts[0], "user=") || !strings.HasPrefix(parts[1], "auth=Bearer ") {
		s.violation("malformed XOAUTH2 response (%d fields)", len(parts))
		return errAuthFailed
	}
	user := strings.ToLower(strings.TrimPrefix(parts[0], "user="))
	raw := strings.TrimPrefix(parts[1], "auth=Bearer ")

	claims := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(raw, claims,
		func(*jwt.Token) (any, error) { return s.opts.TokenKey, nil },
		jwt.WithValidMethods([]string{"RS256"}),
		jwt.WithTimeFunc(s.clock),
		jwt.WithExpirationRequired(),
		jwt.WithAudience(AudienceResource, AudienceAppID),
	)
	if err != nil {
		s.log.Info("token rejected", zap.String("user", user), zap.Error(err))
		return errAuthFailed
	}
	tid, _ := claims["tid"].(string)
	if tid != s.opts.Tenant {
		s.log.Info("token rejected: wrong tenant", zap.String("user", user), zap.String("tid", tid))
		return errAuthFailed
	}
	appID, _ := claims["appid"].(string)
	if appID == "" {
		appID, _ = claims["azp"].(string) // v2 tokens name the client azp
	}
	mb, ok := s.mailboxes[user]
	switch {
	case hasRole(claims["roles"], RoleSendAsApp):
		if !ok || !mb.apps[strings.ToLower(appID)] {
			s.log.Info("token rejected: app has no FullAccess on mailbox", zap.String("user", user), zap.String("appid", appID))
			return errAuthFailed
		}
	case ok && mb.rbac[strings.ToLower(appID)]:
		// RBAC for Applications: no role in the token, no mailbox
		// permission needed; the role assignment's scope decides.
	default:
		s.log.Info("token rejected: no SMTP.SendAsApp role and no RBAC role assignment", zap.String("user", user), zap.String("appid", appID))
		return errAuthFailed
	}
	if mb.mb.AuthDisabled {
		return errAuthDisabled
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active[user] >= s.opts.MaxConcurrentPerMailbox {
		s.stats.AuthFailures++
		return errConcurrent
	}
	s.active[user]++
	if s.active[user] > s.stats.MaxConcurrentPerMailbox[user] {
		s.stats.MaxConcurrentPerMailbox[user] = s.active[user]
	}
	s.stats.Auths++
	ss.mailbox = user
	ss.appID = appID
	return nil
}

func hasRole(v any, role string) bool {
	switch r := v.(type) {
	case []any:
		for _, x := range r {
			if x == role {
				return true
			}
		}
	case string:
		return r == role
	}
	return false
}

var errSyntax = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 4}, Message: "Invalid arguments"}

// Mail and Rcpt parse the client's own line (faultConn.line) strictly;
// go-smtp's arguments are not used. A line that is not strict RFC 5321
// is a protocol violation of the relay.
func (ss *session) Mail(string, *smtp.MailOptions) error {
	line := ss.fc.line
	ss.fc.line = ""
	_, p, params, err := ParseCommand(line, false)
	if err != nil {
		ss.s.violation("MAIL line %q: %v", line, err)
		return errSyntax
	}
	if ss.mailbox == "" {
		return errNotAuthed
	}
	if f := ss.s.take(StageMail, ""); f != nil {
		return ss.s.fire(ss.fc, f)
	}
	if mb := ss.s.mailboxes[ss.mailbox]; !mb.mb.SendAsAny && !mb.sendAs[strings.ToLower(p.Mailbox())] {
		return errSendAsEnv
	}
	ss.from, ss.mailParams = p, params
	ss.rcpts, ss.rcptParams = nil, nil
	ss.utf8, ss.body = false, ""
	for _, pr := range params {
		switch strings.ToUpper(pr.Keyword) {
		case "SMTPUTF8":
			ss.utf8 = true
		case "BODY":
			ss.body = smtp.BodyType(strings.ToUpper(pr.Value))
		}
	}
	return nil
}

func (ss *session) Rcpt(string, *smtp.RcptOptions) error {
	line := ss.fc.line
	ss.fc.line = ""
	_, p, params, err := ParseCommand(line, ss.utf8)
	if err != nil {
		ss.s.violation("RCPT line %q: %v", line, err)
		return errSyntax
	}
	if f := ss.s.take(StageRcpt, p.Mailbox()); f != nil {
		return ss.s.fire(ss.fc, f)
	}
	ss.rcpts = append(ss.rcpts, p)
	ss.rcptParams = append(ss.rcptParams, params)
	return nil
}

// headerCapture keeps the first bytes of the message, enough for the header.
type headerCapture struct {
	buf []byte
	max int
}

func (h *headerCapture) Write(p []byte) (int, error) {
	if room := h.max - len(h.buf); room > 0 {
		h.buf = append(h.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// Data records the message. go-smtp sends "354" itself and sends whatever
// Data returns only after the terminating dot, so a "data" Reply fault is
// seen by the client as the final reply (as Exchange's content rejections
// are); a "data" Drop closes the connection after the first chunk of body.
// The success reply is returned as an *smtp.SMTPError with code 250 because
// go-smtp writes an SMTPError's code verbatim and otherwise says "OK: queued".
func (ss *session) Data(io.Reader) error {
	s := ss.s
	// The message as faultConn framed it (wire.go); go-smtp's reader only
	// gets the end of data.
	var r io.Reader = ss.fc.data
	if r == nil {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "data transfer failed"}
	}
	if f := s.take(StageData, ""); f != nil {
		if f.Drop || f.Reply == nil {
			if _, err := r.Read(make([]byte, 1024)); err != nil {
				s.log.Debug("read before drop", zap.Error(err))
			}
		}
		return s.fire(ss.fc, f)
	}
	h := sha256.New()
	hdr := &headerCapture{max: 256 << 10}
	var data bytes.Buffer
	w := io.MultiWriter(h, hdr)
	if !s.opts.Discard {
		w = io.MultiWriter(h, hdr, &data)
	}
	n, err := io.Copy(w, r)
	if err != nil {
		// Too large (go-smtp's 552) or the client went away: nothing is kept.
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			return se
		}
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "data transfer failed"}
	}
	if f := s.take(StageDot, ""); f != nil {
		return s.fire(ss.fc, f)
	}
	mb := s.mailboxes[ss.mailbox]
	hf := parseHeader(hdr.buf)
	if from := headerFrom(hf); from != "" && !mb.mb.SendAsAny && !mb.sendAs[strings.ToLower(from)] {
		// Observed Exchange reply after DATA (docs/exchange.md#554-52252-sendasdenied).
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 2, 252},
			Message: fmt.Sprintf("SendAsDenied; %s not allowed to send as %s; STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied", ss.mailbox, from)}
	}
	m := Message{
		MailFrom:   ss.from.Mailbox(),
		From:       ss.from,
		To:         append([]Path(nil), ss.rcpts...),
		MailParams: ss.mailParams,
		RcptTo:     rcptMailboxes(ss.rcpts),
		RcptParams: append([][]Param(nil), ss.rcptParams...),
		AuthUser:   ss.mailbox,
		AppID:      ss.appID,
		Size:       n,
		TLS:        ss.fc.isTLS(),
		Session:    ss.fc.id,
		SMTPUTF8:   ss.utf8,
		BodyType:   ss.body,
		Accepted:   time.Now(),
	}
	if hf != nil {
		m.MessageID = strings.TrimSpace(hf.Get("Message-Id"))
	}
	copy(m.SHA256[:], h.Sum(nil))
	if !s.opts.Discard {
		m.Data = data.Bytes()
	}
	id := s.msgID.Add(1)
	s.mu.Lock()
	s.messages = append(s.messages, m)
	s.cond.Broadcast()
	s.mu.Unlock()
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0},
		Message: fmt.Sprintf("OK <%d@fake> [Hostname=%s]", id, Hostname)}
}

func rcptMailboxes(ps []Path) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.Mailbox()
	}
	return out
}

// parseHeader parses the header section; nil if it does not parse.
func parseHeader(b []byte) mail.Header {
	msg, err := mail.ReadMessage(bufio.NewReader(bytes.NewReader(b)))
	if err != nil {
		return nil
	}
	return msg.Header
}

// headerFrom returns the address in the From: header, "" if there is none
// (a message without From is accepted; Exchange's behaviour there is not
// documented).
func headerFrom(h mail.Header) string {
	v := h.Get("From")
	if v == "" {
		return ""
	}
	a, err := mail.ParseAddress(v)
	if err != nil {
		return v
	}
	return a.Address
}

func (ss *session) Reset() {
	ss.from, ss.mailParams = Path{}, nil
	ss.rcpts, ss.rcptParams = nil, nil
	ss.utf8 = false
	ss.body = ""
}

// Logout ends the session: on STARTTLS, and when the connection closes.
func (ss *session) Logout() error {
	if ss.mailbox != "" {
		ss.s.mu.Lock()
		ss.s.active[ss.mailbox]--
		ss.s.mu.Unlock()
		ss.mailbox = ""
	}
	return nil
}
