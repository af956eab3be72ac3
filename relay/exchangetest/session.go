package exchangetest

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"
)

// backend gives go-smtp one session per connection; an "ehlo" fault fires
// here, before the session exists.
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

// session is one connection's SMTP state: the authenticated mailbox and
// the envelope being built. AUTH is in auth.go.
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

var (
	errSyntax    = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 4}, Message: "Invalid arguments"}
	errNotAuthed = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 57}, Message: "Client not authenticated to send mail"}
	errSendAsEnv = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 60}, Message: "SMTP; Client does not have permissions to send as this sender"}
)

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
