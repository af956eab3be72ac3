// Package reply owns the SMTP reply that a failure turns into.
//
// Every error that can reach an SMTP client, or decide a retry, is a *Error:
// a basic code (RFC 5321 §4.2), an enhanced status code (RFC 3463), a text
// that is safe to show the client and to log, the stage of the transaction
// it answered, and an optional cause that is logged but never sent.
// Temporary versus permanent is derived from the code's first digit, as RFC
// 5321 §4.2.1 defines it, so the two cannot disagree.
//
// The package is a leaf: it imports nothing from the module and no SMTP
// library, so the spool, delivery and the envelope can speak of replies
// without depending on go-smtp. Only the listener (relay/smtpd, ForClient)
// and the Exchange client (relay/upstream, FromSMTP) convert between an
// *Error and go-smtp's *smtp.SMTPError (docs/architecture.md).
package reply

import (
	"errors"
	"fmt"
)

// Stage says where in a transaction a reply was produced. Retry policy needs
// it: 535 at AUTH is a configuration problem for every message, 550 at RCPT
// concerns one recipient.
type Stage string

const (
	StageLocal   Stage = "local"   // our own intake, spool or policy
	StageToken   Stage = "token"   // obtaining the access token from Entra ID
	StageConnect Stage = "connect" // TCP connect, greeting
	StageTLS     Stage = "tls"     // STARTTLS and certificate verification
	StageAuth    Stage = "auth"    // AUTH XOAUTH2
	StageMail    Stage = "mail"    // MAIL FROM
	StageRcpt    Stage = "rcpt"    // RCPT TO
	StageData    Stage = "data"    // DATA and the final reply
)

// EnhancedCode is an RFC 3463 enhanced status code, class.subject.detail,
// e.g. {4, 3, 0}. Its two special values are go-smtp's, so the listener and
// the Exchange client convert with a plain type conversion.
type EnhancedCode [3]int

var (
	// NoEnhancedCode: the reply carries no enhanced code at all.
	NoEnhancedCode = EnhancedCode{-1, -1, -1}
	// EnhancedCodeNotSet: unknown; X.0.0 is derived from the basic code.
	EnhancedCodeNotSet = EnhancedCode{0, 0, 0}
)

// Error is an SMTP reply together with what caused it.
type Error struct {
	Code     int          // basic reply code, e.g. 451
	Enhanced EnhancedCode // e.g. {4,3,0}; EnhancedCodeNotSet if unknown
	Text     string       // client-visible text; must not contain secrets
	Stage    Stage        // where it happened; empty means local
	Err      error        // cause, for logs only; may be nil
}

// New returns a reply without a cause.
func New(code int, enh EnhancedCode, text string) *Error {
	return &Error{Code: code, Enhanced: enh, Text: text, Stage: StageLocal}
}

// Wrap returns a reply caused by err.
func Wrap(err error, code int, enh EnhancedCode, text string) *Error {
	return &Error{Code: code, Enhanced: enh, Text: text, Stage: StageLocal, Err: err}
}

// Error renders "451 4.3.0 text (stage): cause".
func (e *Error) Error() string {
	s := fmt.Sprintf("%d %s %s", e.Code, EnhancedString(e.Code, e.Enhanced), e.Text)
	if e.Stage != "" && e.Stage != StageLocal {
		s += " (at " + string(e.Stage) + ")"
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Temporary reports whether the reply is a 4xx (RFC 5321 §4.2.1: "Transient
// Negative Completion"). Anything else that is an error is permanent.
func (e *Error) Temporary() bool { return e.Code/100 == 4 }

// EnhancedString formats an enhanced code the way go-smtp writes it, deriving
// X.0.0 from the basic code when it is not set.
func EnhancedString(code int, enh EnhancedCode) string {
	switch enh {
	case NoEnhancedCode:
		return ""
	case EnhancedCodeNotSet:
		return fmt.Sprintf("%d.0.0", code/100)
	}
	return fmt.Sprintf("%d.%d.%d", enh[0], enh[1], enh[2])
}

// As returns the *Error in err's chain, or nil if there is none.
func As(err error) *Error {
	var re *Error
	if errors.As(err, &re) {
		return re
	}
	return nil
}

// Temporary classifies any error for retry: replies by their code, anything
// else (network, TLS, timeouts, token service) as temporary.
func Temporary(err error) bool {
	if re := As(err); re != nil {
		return re.Temporary()
	}
	return true
}
