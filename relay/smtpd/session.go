package smtpd

import (
	"io"
	"net/netip"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

	"github.com/o365relay/o365relay/relay/message"
	"github.com/o365relay/o365relay/relay/reply"
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
}

func (s *session) Reset() {
	s.from, s.haveFrom, s.mailbox, s.utf8, s.eightBit, s.rcpts = "", false, "", false, false, nil
}

func (s *session) Logout() error { return nil }

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	if s.srv.draining.Load() {
		return errShuttingDown.SMTP()
	}
	if opts == nil {
		opts = &smtp.MailOptions{}
	}
	if err := checkAddress(from, opts.UTF8, true); err != nil {
		return err.SMTP()
	}
	mailbox, err := s.srv.opts.Route(from)
	if err != nil {
		s.srv.log.Info("sender refused", zap.String("client", s.clientIP.String()),
			zap.String("from", from), zap.Error(err))
		return reply.ForClient(err)
	}
	s.from, s.haveFrom, s.mailbox = from, true, mailbox
	s.utf8 = opts.UTF8
	s.eightBit = opts.Body == smtp.Body8BitMIME
	return nil
}

func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	if s.srv.draining.Load() {
		return errShuttingDown.SMTP()
	}
	if err := checkAddress(to, s.utf8, false); err != nil {
		return err.SMTP()
	}
	s.rcpts = append(s.rcpts, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	srv := s.srv
	srv.inData.Add(1)
	defer srv.inData.Done()

	// go-smtp reads the whole body under the deadline it set when the DATA
	// line arrived (one CommandTimeout). Give the body its own, longer,
	// deadline: long enough for a 35 MB attachment, short enough that a
	// slow-drip client cannot hold a connection slot forever.
	if s.tc != nil {
		_ = s.tc.SetReadDeadline(time.Now().Add(srv.opts.DataTimeout))
		s.tc.startData()
	}
	now := srv.opts.Clock()
	env := &message.Envelope{
		ID:           message.NewID(now),
		From:         s.from,
		To:           append([]string(nil), s.rcpts...),
		Mailbox:      s.mailbox,
		SMTPUTF8:     s.utf8,
		EightBitMIME: s.eightBit,
		Received:     now,
		Client:       s.clientIP.String(),
		Helo:         s.conn.Hostname(),
	}
	_, isTLS := s.conn.TLSConnectionState()
	hdr := receivedHeader(env.Helo, env.Client, srv.opts.Hostname, string(env.ID), true, isTLS, false, now)
	checker := newBodyChecker(r, srv.opts.LineEndings)
	if s.tc != nil {
		checker.marker = s.tc.takeMarker
	}
	body := io.MultiReader(strings.NewReader(hdr), checker)

	text, err := srv.opts.Sink.Submit(srv.baseCtx, env, body)
	log := srv.log.With(zap.String("id", string(env.ID)), zap.String("client", env.Client),
		zap.String("from", env.From), zap.Int("rcpts", len(env.To)), zap.String("mailbox", env.Mailbox))
	if err != nil {
		rep := reply.ForClient(err)
		log.Warn("message refused", zap.Int("code", rep.Code),
			zap.String("enhanced", reply.EnhancedString(rep.Code, rep.EnhancedCode)),
			zap.String("reply", rep.Message), zap.Error(err))
		return rep
	}
	log.Info("message accepted", zap.Int64("size", env.Size), zap.String("reply", text))
	if s.tc != nil {
		s.tc.armSuccess(text)
	}
	return nil
}

// checkAddress applies what RFC 5321 §4.1.2 and RFC 6531 §3.3 say a path may
// hold, beyond go-smtp's parser: non-ASCII only with SMTPUTF8, no control
// characters, a domain part, and the 256-octet path limit (RFC 5321
// §4.5.3.1.3). The null reverse-path is allowed for MAIL only.
func checkAddress(addr string, utf8OK, isMail bool) *reply.Error {
	if addr == "" {
		if isMail {
			return nil
		}
		return reply.New(501, smtp.EnhancedCode{5, 1, 3}, "Empty recipient address")
	}
	code := smtp.EnhancedCode{5, 1, 7} // RFC 3463 X.1.7: bad sender's mailbox address syntax
	if !isMail {
		code = smtp.EnhancedCode{5, 1, 3} // X.1.3: bad destination mailbox address syntax
	}
	if len(addr) > 254 {
		return reply.New(501, code, "Address too long (RFC 5321 section 4.5.3.1.3)")
	}
	if !utf8.ValidString(addr) {
		return reply.New(501, code, "Address is not valid UTF-8")
	}
	for _, r := range addr {
		if r < 0x20 || r == 0x7f {
			return reply.New(501, code, "Address contains a control character")
		}
		if r >= 0x80 && !utf8OK {
			// RFC 6531 §3.4: without SMTPUTF8 on MAIL, non-ASCII is refused.
			return reply.New(553, smtp.EnhancedCode{5, 6, 7}, "Non-ASCII address requires the SMTPUTF8 parameter on MAIL FROM (RFC 6531)")
		}
	}
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 {
		return reply.New(501, code, "Address must be local-part@domain")
	}
	return nil
}
