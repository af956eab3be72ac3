package exchangetest

import (
	"crypto/tls"
	"fmt"
	"strings"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"
)

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
