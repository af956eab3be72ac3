package upstream

import (
	"fmt"

	"github.com/emersion/go-smtp"

	"github.com/o365relay/o365relay/relay/reply"
	"github.com/o365relay/o365relay/token"
)

// FromSMTP keeps an upstream server's reply exactly: code, enhanced code
// and text. stage records which command it answered. With smtpd.ForClient
// it is one of the two places where go-smtp's replies and the relay's meet.
//
// A positive reply (2xx, 3xx) where another was expected is no verdict on
// the message: the session is out of step with the server (a reply too
// many, or one missing). It becomes 451 4.5.0 (RFC 3463 X.5.0, other
// protocol status), temporary, so the message is tried again on a new
// session instead of failing for the path's fault.
func FromSMTP(e *smtp.SMTPError, stage reply.Stage) *reply.Error {
	if outOfStep(e) {
		return &reply.Error{Code: 451, Enhanced: reply.EnhancedCode{4, 5, 0}, Stage: stage,
			Text: fmt.Sprintf("Exchange answered %d where another reply was expected; session out of step, try again later", e.Code)}
	}
	return &reply.Error{Code: e.Code, Enhanced: reply.EnhancedCode(e.EnhancedCode), Text: e.Message, Stage: stage}
}

// outOfStep says whether an unexpected reply is a positive one (see
// FromSMTP): after it the session cannot carry another transaction.
func outOfStep(e *smtp.SMTPError) bool { return e.Code < 400 }

// tokenError is how a token failure reaches the retry logic and an SMTP
// client: 451 4.7.0 at StageToken (RFC 3463 X.7.0 "Other or undefined
// security status"), whatever Entra ID answered. It is always transient: a
// message waits in the spool until the admin fixes the configuration or
// Entra ID recovers, and is never failed for it
// (docs/design.md#only-the-messages-own-verdict-fails-it). The source's
// error stays the cause, so errors.As finds the *token.EntraError and its
// explanation; whether the cause itself is transient is
// EntraError.Temporary. This is the one place token errors become replies.
func tokenError(err error) *reply.Error {
	text := "Cannot obtain an access token from Entra ID; try again later"
	if ee := token.AsEntraError(err); ee != nil && ee.Code() != 0 {
		text = fmt.Sprintf("Entra ID refused the token request (AADSTS%d); try again later", ee.Code())
	}
	return &reply.Error{Code: 451, Enhanced: reply.EnhancedCode{4, 7, 0}, Stage: reply.StageToken, Text: text, Err: err}
}
