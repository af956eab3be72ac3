// Package reply owns the SMTP reply that a failure turns into.
//
// Every error that can reach an SMTP client, or decide a retry, is a *Error:
// a basic code (RFC 5321 §4.2), an enhanced status code (RFC 3463), a text
// that is safe to show the client and to log, and an optional cause that is
// logged but never sent. Temporary versus permanent is derived from the code's
// first digit, as RFC 5321 §4.2.1 defines it, so the two cannot disagree.
//
// The package exists because go-smtp maps errors by type assertion, not
// errors.As: a wrapped *smtp.SMTPError loses its code, and any other error
// returned from Session.Data becomes "554 5.0.0" — a permanent failure for
// what may be a transient fault (exchange-online.md §5.1). ForClient is the
// single place where our errors become go-smtp replies, and its default for an
// unknown error is transient.
package reply

import (
	"errors"
	"fmt"

	"github.com/emersion/go-smtp"
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

// Error is an SMTP reply together with what caused it.
type Error struct {
	Code     int               // basic reply code, e.g. 451
	Enhanced smtp.EnhancedCode // e.g. {4,3,0}; smtp.EnhancedCodeNotSet if unknown
	Text     string            // client-visible text; must not contain secrets
	Stage    Stage             // where it happened; empty means local
	Err      error             // cause, for logs only; may be nil
}

// New returns a reply without a cause.
func New(code int, enh smtp.EnhancedCode, text string) *Error {
	return &Error{Code: code, Enhanced: enh, Text: text, Stage: StageLocal}
}

// Wrap returns a reply caused by err.
func Wrap(err error, code int, enh smtp.EnhancedCode, text string) *Error {
	return &Error{Code: code, Enhanced: enh, Text: text, Stage: StageLocal, Err: err}
}

// FromSMTP keeps an upstream server's reply exactly: code, enhanced code and
// text. stage records which command it answered.
func FromSMTP(e *smtp.SMTPError, stage Stage) *Error {
	return &Error{Code: e.Code, Enhanced: e.EnhancedCode, Text: e.Message, Stage: stage}
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

// SMTP returns the reply as go-smtp sends it. The cause is not included.
func (e *Error) SMTP() *smtp.SMTPError {
	return &smtp.SMTPError{Code: e.Code, EnhancedCode: e.Enhanced, Message: e.Text}
}

// EnhancedString formats an enhanced code the way go-smtp writes it, deriving
// X.0.0 from the basic code when it is not set.
func EnhancedString(code int, enh smtp.EnhancedCode) string {
	switch enh {
	case smtp.NoEnhancedCode:
		return ""
	case smtp.EnhancedCodeNotSet:
		return fmt.Sprintf("%d.0.0", code/100)
	}
	return fmt.Sprintf("%d.%d.%d", enh[0], enh[1], enh[2])
}

// Common local replies. Texts say what the client can do about it.
var (
	// RFC 3463 §3.4 X.3.0 "Other or undefined mail system status".
	errInternal = smtp.EnhancedCode{4, 3, 0}
)

// As returns the *Error in err's chain, converting a bare *smtp.SMTPError
// (with StageLocal), or nil if there is none.
func As(err error) *Error {
	var re *Error
	if errors.As(err, &re) {
		return re
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return FromSMTP(se, StageLocal)
	}
	return nil
}

// ForClient converts any error into the reply go-smtp will send, unwrapped so
// go-smtp's type assertion sees it. An error that carries no reply is a local
// fault we do not understand: it becomes "451 4.3.0", transient, because
// telling a client to give up on a message because of our bug would lose it.
// The cause never reaches the client.
func ForClient(err error) *smtp.SMTPError {
	if err == nil {
		return nil
	}
	if re := As(err); re != nil {
		return re.SMTP()
	}
	return &smtp.SMTPError{Code: 451, EnhancedCode: errInternal, Message: "Local error, message not accepted; try again later"}
}

// Temporary classifies any error for retry: replies by their code, anything
// else (network, TLS, timeouts, token service) as temporary.
func Temporary(err error) bool {
	if re := As(err); re != nil {
		return re.Temporary()
	}
	return true
}
