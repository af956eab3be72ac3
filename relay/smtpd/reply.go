package smtpd

import (
	"errors"
	"fmt"

	"github.com/emersion/go-smtp"

	"github.com/o365relay/o365relay/config/address"
	"github.com/o365relay/o365relay/relay/reply"
)

// ForClient converts any error into the reply go-smtp will send, unwrapped
// so that go-smtp's type assertion sees it: go-smtp maps errors by type
// assertion, not errors.As, so a wrapped *smtp.SMTPError loses its code, and
// any other error returned from Session.Data becomes "554 5.0.0" — a
// permanent failure for what may be a transient fault. ForClient is the one
// place where the relay's errors become go-smtp replies.
//
// A *reply.Error and the address parser's *address.Error keep their code,
// enhanced code and text; go-smtp's own replies pass as they are. An error that carries no reply is a local fault
// we do not understand: it becomes "451 4.3.0", transient, because telling a
// client to give up on a message because of our bug would lose it. The cause
// never reaches the client.
func ForClient(err error) *smtp.SMTPError {
	if err == nil {
		return nil
	}
	if re := reply.As(err); re != nil {
		return &smtp.SMTPError{Code: re.Code, EnhancedCode: smtp.EnhancedCode(re.Enhanced), Message: re.Text}
	}
	var ae *address.Error
	if errors.As(err, &ae) {
		return &smtp.SMTPError{Code: ae.Code, EnhancedCode: smtp.EnhancedCode(ae.Enhanced), Message: ae.Text}
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return &smtp.SMTPError{Code: se.Code, EnhancedCode: se.EnhancedCode, Message: se.Message}
	}
	// RFC 3463 X.3.0 "Other or undefined mail system status".
	return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0},
		Message: "Local error, message not accepted; try again later"}
}

// SenderRefused is the reply to a sender no sender rule matches (Router's
// ok is false): 550 5.7.1 (RFC 3463 X.7.1, delivery not authorized), naming
// the config file's senders setting to change.
func SenderRefused(sender string) *reply.Error {
	shown := sender
	if shown == "" {
		shown = "<> (null sender)"
	}
	return reply.New(550, reply.EnhancedCode{5, 7, 1},
		fmt.Sprintf("Sender %s is not allowed to relay: no rule in the config file's senders list matches it; add a rule for the address, its \"*@domain\", or a catch-all \"*\"", shown))
}
