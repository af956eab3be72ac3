package upstream

import (
	"github.com/emersion/go-smtp"

	"github.com/o365relay/o365relay/relay/reply"
)

// FromSMTP keeps an upstream server's reply exactly: code, enhanced code
// and text. stage records which command it answered. With smtpd.ForClient
// it is one of the two places where go-smtp's replies and the relay's meet.
func FromSMTP(e *smtp.SMTPError, stage reply.Stage) *reply.Error {
	return &reply.Error{Code: e.Code, Enhanced: reply.EnhancedCode(e.EnhancedCode), Text: e.Message, Stage: stage}
}
