package smtpd

import (
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

	"github.com/o365relay/o365relay/config/address"
	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/reply"
	"github.com/o365relay/o365relay/relay/rewrite"
)

// session is one client connection's SMTP state (go-smtp calls Reset between
// transactions and Logout at the end).
type session struct {
	srv      *Server
	conn     *smtp.Conn
	tc       *trackedConn
	clientIP netip.Addr

	from     string
	haveFrom bool
	mailbox  string
	utf8     bool
	eightBit bool
	rcpts    []string
	// authUser is the local AUTH user; it lasts for the session (RFC 4954
	// §4: a client authenticates once), not only one transaction.
	authUser string
}

// errPanic answers a command whose handling panicked. RFC 5321 §3.8: a
// server that ends the session on its own answers 421; X.3.0 (RFC 3463) is
// a fault of the mail system, not of the message, so the client retries.
var errPanic = reply.New(421, reply.EnhancedCode{4, 3, 0}, "Internal error, closing connection; try again later")

// contain is deferred by every method go-smtp calls: a panic while
// handling one connection becomes that connection's 421 4.3.0 and its end,
// logged without the panic's value (see logPanic); the daemon and the other
// sessions go on. go-smtp recovers panics in command handlers too, but its
// reply is 421 4.0.0 and its log line prints the panic value.
func (s *session) contain(errp *error, where string) {
	v := recover()
	if v == nil {
		return
	}
	logPanic(s.srv.log, v, s.clientIP, where)
	if s.tc != nil {
		s.tc.closeAfterReply()
	}
	if errp != nil {
		*errp = ForClient(errPanic)
	}
}

// errSizeDeclared is go-smtp's own reply to a SIZE= over the limit.
var errSizeDeclared = reply.New(552, reply.EnhancedCode{5, 3, 4}, "Max message size exceeded")

// errClosed answers commands go-smtp still parses from its read buffer
// after this relay has said its last word (421 and close); the answer is
// dropped, and nothing is routed or stored.
var errClosed = reply.New(421, reply.EnhancedCode{4, 7, 0}, "Closing connection")

// closed reports whether the client has been told the connection is
// closing. go-smtp goes on handling the commands the client had pipelined
// into its buffer; none of them may start a transaction.
func (s *session) closed() bool {
	return s.tc != nil && s.tc.closing.Load() != connOpen
}

func (s *session) Reset() {
	defer s.contain(nil, "RSET")
	s.from, s.haveFrom, s.mailbox, s.utf8, s.eightBit, s.rcpts = "", false, "", false, false, nil
}

func (s *session) Logout() (err error) {
	defer s.contain(&err, "logout")
	return nil
}

// Mail and Rcpt take the address from the command line exactly as the
// client sent it (trackedConn.commandLine), parsed once by package
// address; go-smtp's own parse of the same line (which unquotes a quoted
// local part) is not used. Policy and the spool get the one canonical
// value.
func (s *session) Mail(_ string, _ *smtp.MailOptions) (err error) {
	defer s.contain(&err, "MAIL")
	if s.closed() {
		return ForClient(errClosed)
	}
	if s.srv.draining.Load() {
		return ForClient(errShuttingDown)
	}
	line, ok := s.commandLine("MAIL")
	if !ok {
		return ForClient(errUnframed)
	}
	m, rerr := address.ParseMail(line)
	if rerr != nil {
		s.srv.log.Info("sender address refused", zap.String("client", s.clientIP.String()), zap.String("reply", rerr.Error()))
		return ForClient(rerr)
	}
	if m.Size > s.srv.opts.MaxMessageBytes {
		// RFC 1870 §6; go-smtp checks against one byte more (see New).
		return ForClient(errSizeDeclared)
	}
	from := m.From.String()
	if s.srv.opts.Auth != nil && s.authUser == "" && (s.tc == nil || !s.tc.trusted) {
		// A client outside allowed_networks was let in only to
		// authenticate (RFC 4954 §6: 530 5.7.0).
		s.srv.log.Info("sender refused: authentication required", zap.String("client", s.clientIP.String()),
			zap.String("from", from))
		return ForClient(errAuthRequired)
	}
	if s.authUser != "" && !s.srv.opts.Auth.MaySend(s.authUser, from) {
		s.srv.log.Info("sender refused for the authenticated user", zap.String("client", s.clientIP.String()),
			zap.String("user", s.authUser), zap.String("from", from))
		return ForClient(errSenderNotAllowed)
	}
	mailbox, routed := s.srv.opts.Route(from)
	if !routed {
		rerr2 := SenderRefused(from)
		s.srv.log.Info("sender refused", zap.String("client", s.clientIP.String()),
			zap.String("from", from), zap.Error(rerr2))
		return ForClient(rerr2)
	}
	s.from, s.haveFrom, s.mailbox = from, true, mailbox
	s.utf8 = m.SMTPUTF8
	s.eightBit = m.Body == "8BITMIME"
	return nil
}

func (s *session) Rcpt(_ string, _ *smtp.RcptOptions) (err error) {
	defer s.contain(&err, "RCPT")
	if s.closed() {
		return ForClient(errClosed)
	}
	if s.srv.draining.Load() {
		return ForClient(errShuttingDown)
	}
	line, ok := s.commandLine("RCPT")
	if !ok {
		return ForClient(errUnframed)
	}
	to, rerr := address.ParseRcpt(line, s.utf8)
	if rerr != nil {
		s.srv.log.Info("recipient address refused", zap.String("client", s.clientIP.String()), zap.String("reply", rerr.Error()))
		return ForClient(rerr)
	}
	s.rcpts = append(s.rcpts, to.String())
	return nil
}

// errUnframed answers a MAIL or RCPT whose line trackedConn did not see
// whole (it cannot happen: such a line is longer than go-smtp accepts).
var errUnframed = reply.New(500, reply.EnhancedCode{5, 5, 2}, "Command line not understood")

// commandLine returns the command line go-smtp is handling, as the client
// sent it, if it is a verb command; each line is handed out once.
func (s *session) commandLine(verb string) (string, bool) {
	if s.tc == nil {
		return "", false
	}
	line := s.tc.envLine
	s.tc.envLine = ""
	if len(line) < 4 || !strings.EqualFold(line[:4], verb) {
		return "", false
	}
	return line, true
}

// errBDAT refuses BDAT (RFC 3030), which CHUNKING is not advertised for
// (trackedConn.Write drops it from go-smtp's EHLO reply): go-smtp runs Data
// for BDAT on its own goroutine while the connection goroutine goes on
// reading commands, so the session's fields and the connection's DATA state
// would be shared between two goroutines. Every client falls back to DATA.
var errBDAT = reply.New(502, reply.EnhancedCode{5, 5, 1}, "BDAT is not supported here; use DATA")

// errDataRead answers a DATA phase cut short by its deadline or the client
// (X.4.2, RFC 3463: bad connection). Nothing was stored; the client retries.
var errDataRead = reply.New(421, reply.EnhancedCode{4, 4, 2}, "Message data not received in time, closing connection")

func (s *session) Data(r io.Reader) (err error) {
	// r is go-smtp's reader, which gets only the end of data; the
	// content comes from the trackedConn's own framing (data.go).
	if _, bdat := r.(*io.PipeReader); bdat {
		// Before touching any state: this is the BDAT goroutine.
		return ForClient(errBDAT)
	}
	srv := s.srv
	// Counted as the 354 went out (Server.beginData), or here for a
	// connection that is not a trackedConn.
	var counted bool
	if s.tc != nil {
		counted, s.tc.dataCounted = s.tc.dataCounted, false
	} else {
		counted = srv.beginData()
	}
	if counted {
		defer srv.inData.Done()
	}
	defer s.contain(&err, "DATA")
	if s.closed() || !counted {
		return ForClient(errShuttingDown)
	}

	env, checker, body, err := s.message()
	if err != nil {
		return err
	}
	text, err := srv.opts.Sink.Submit(srv.baseCtx, env, body)
	err = s.bodyVerdict(env, checker, err)
	return s.answer(env, text, err)
}

// message sets DATA's own read deadline and builds the envelope and the
// body the sink reads: our Received: header, then the client's content
// through the body checks. Apart from Data so each reads as one step.
func (s *session) message() (*envelope.Envelope, *bodyChecker, io.Reader, error) {
	srv := s.srv
	// go-smtp reads the whole body under the deadline it set when the DATA
	// line arrived (one CommandTimeout). Give the body its own, longer,
	// deadline: long enough for a 35 MB attachment, short enough that a
	// slow-drip client cannot hold a connection slot forever.
	_, isTLS := s.tlsState()
	if s.tc == nil || s.tc.data == nil {
		// Every connection of a Server is a trackedConn, which framed
		// the 354 that brought go-smtp here.
		return nil, nil, nil, ForClient(errUnframed)
	}
	_ = s.tc.SetReadDeadline(time.Now().Add(srv.opts.DataTimeout))
	content := s.tc.data
	content.max = srv.opts.MaxMessageBytes
	now := srv.opts.Clock()
	env := &envelope.Envelope{
		ID:           envelope.NewID(now),
		From:         s.from,
		To:           append([]string(nil), s.rcpts...),
		Mailbox:      s.mailbox,
		SMTPUTF8:     s.utf8,
		EightBitMIME: s.eightBit,
		Received:     now,
		Client:       s.clientIP.String(),
		Helo:         s.conn.Hostname(),
	}
	hdr := receivedHeader(env.Helo, env.Client, srv.opts.Hostname, string(env.ID), true, isTLS, s.authUser != "", now)
	checker := newBodyChecker(content, srv.opts.LineEndings)
	if rw := srv.opts.Rewrite; rw != nil && rw(s.from) == rewrite.EnvelopeFrom {
		// The rewrite reads the header section, ours included, up to
		// rewrite.MaxHeader (see errHeaderTooLong).
		checker.maxHead = int64(rewrite.MaxHeader - len(hdr))
	}
	body := io.MultiReader(strings.NewReader(hdr), checker)
	return env, checker, body, nil
}

// bodyVerdict gives the client's answer once the sink returned err: a body
// not received in full or one that broke a rule overrides what the sink
// said, and ends the session where the rest could be taken for commands.
func (s *session) bodyVerdict(env *envelope.Envelope, checker *bodyChecker, err error) error {
	srv := s.srv
	if rerr := checker.readErr(); rerr != nil {
		// A DATA deadline (a slow-drip client) or a dropped connection:
		// the rest of the message must not be taken for commands, so the
		// session ends here (RFC 5321 §4.5.3.2.5 lets a server close
		// after a timeout in DATA).
		srv.log.Info("message data not received", zap.String("id", string(env.ID)),
			zap.String("client", env.Client), zap.Error(rerr))
		if err == nil {
			srv.log.Error("sink accepted a body that was not received in full", zap.String("id", string(env.ID)))
		}
		err = errDataRead
		if s.tc != nil {
			s.tc.closeAfterReply()
		}
	}
	if refusal := checker.refusal(); refusal != nil {
		// The body broke a rule (line ending, hop count, size, line
		// length): that is the client's answer, however the sink passed on
		// the read error. A sink that stored such a body anyway is a bug;
		// the client still hears the refusal.
		if err == nil {
			srv.log.Error("sink accepted a body the checks refused", zap.String("id", string(env.ID)))
		}
		err = refusal
		if refusal == errLineTooLong && s.tc != nil {
			// As go-smtp does for a command line: this reply is the
			// last.
			s.tc.closeAfterReply()
		}
	}
	return err
}

// answer logs the outcome once and turns it into the reply: the refusal,
// or a 250 that names the queue ID.
func (s *session) answer(env *envelope.Envelope, text string, err error) error {
	srv := s.srv
	// The fields go to the one log call (a logger With them would be
	// built for every message).
	fields := make([]zap.Field, 5, 9)
	fields[0], fields[1], fields[2] = zap.String("id", string(env.ID)), zap.String("client", env.Client), zap.String("from", env.From)
	fields[3], fields[4] = zap.Int("rcpts", len(env.To)), zap.String("mailbox", env.Mailbox)
	if err != nil {
		rep := ForClient(err)
		srv.log.Warn("message refused", append(fields, zap.Int("code", rep.Code),
			zap.String("enhanced", reply.EnhancedString(rep.Code, reply.EnhancedCode(rep.EnhancedCode))),
			zap.String("reply", rep.Message), zap.Error(err))...)
		return rep
	}
	srv.log.Info("message accepted", append(fields, zap.Int64("size", env.Size), zap.String("reply", text))...)
	// go-smtp's Session has no way to return a success text, but it
	// writes whatever *smtp.SMTPError Data returns as the reply (the same
	// type assertion ForClient relies on), so a 250 naming the
	// queue ID goes out in place of its fixed "250 2.0.0 OK: queued" —
	// over STARTTLS too.
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: text}
}
