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
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"
)

// Hostname is the name the fake announces and puts in its replies.
const Hostname = "fake.exchangetest"

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
		e := newMailboxEntry(addr, mb)
		s.mailboxes[e.addr] = e
	}
	s.srv = s.newSMTPServer()
	// go-smtp gets no TLSConfig: faultConn runs STARTTLS underneath it
	// (wire.go), so that the fake sees the client's plaintext.
	if !opts.NoSTARTTLS {
		s.tlsConfig = &tls.Config{Certificates: []tls.Certificate{opts.TLS}, MinVersion: tls.VersionTLS12}
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("exchangetest: listen: %w", err)
	}
	s.ln = ln
	go func() {
		// Owned by the Server: Close stops it and waits on s.done.
		defer close(s.done)
		s.serveErr = s.srv.Serve(&listener{Listener: ln, s: s})
	}()
	return s, nil
}

// newMailboxEntry indexes one configured mailbox by lower-cased address,
// app ID and Send-As address, so AUTH and MAIL look them up directly.
func newMailboxEntry(addr string, mb Mailbox) mailboxEntry {
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
	return e
}

// newSMTPServer configures go-smtp with Exchange's advertised limits; kept
// apart from NewServer so the list of limits reads as one table.
func (s *Server) newSMTPServer() *smtp.Server {
	opts := s.opts
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
	return srv
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

type zapLogger struct{ l *zap.Logger }

func (z zapLogger) Printf(format string, v ...any) { z.l.Debug(fmt.Sprintf(format, v...)) }
func (z zapLogger) Println(v ...any)               { z.l.Debug(fmt.Sprintln(v...)) }
