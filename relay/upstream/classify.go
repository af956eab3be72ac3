package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"

	"github.com/emersion/go-smtp"

	"github.com/o365relay/o365relay/relay/reply"
)

// fail counts a failure reply and returns it.
func (c *Client) fail(e *reply.Error) *reply.Error {
	countReply(e.Stage, e.Code)
	return e
}

// classify maps any error from go-smtp or the network to a *reply.Error.
func (c *Client) classify(err error, stage reply.Stage) *reply.Error {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return FromSMTP(se, stage)
	}
	if re := tlsVerifyError(err, c.host, stage); re != nil {
		return re
	}
	var alert tls.AlertError
	var rh tls.RecordHeaderError
	if errors.As(err, &alert) || errors.As(err, &rh) {
		return &reply.Error{Code: 451, Enhanced: reply.EnhancedCode{4, 7, 5}, Stage: stage,
			Text: fmt.Sprintf("TLS handshake with %s failed", c.host), Err: err}
	}
	return netError(err, stage, fmt.Sprintf("connection to %s failed", c.opts.Addr))
}

// tlsVerifyError explains a certificate verification failure. It is
// temporary: it may be an interception (MITM) that goes away, or a CA
// change that an update of the trust store fixes; the text says which host
// and why so an operator can tell.
func tlsVerifyError(err error, host string, stage reply.Stage) *reply.Error {
	var why string
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	var ci x509.CertificateInvalidError
	var cv *tls.CertificateVerificationError
	switch {
	case errors.As(err, &ua):
		why = "signed by an unknown authority"
	case errors.As(err, &he):
		why = "not valid for this host name"
	case errors.As(err, &ci):
		why = "invalid (" + ci.Error() + ")"
	case errors.As(err, &cv):
		why = "verification failed"
	default:
		return nil
	}
	return &reply.Error{Code: 451, Enhanced: reply.EnhancedCode{4, 7, 5}, Stage: reply.StageTLS,
		Text: fmt.Sprintf("TLS certificate of %s not trusted: %s", host, why), Err: err}
}

// netError maps network failures: RFC 3463 X.4.1 "no answer from host"
// for connect failures and timeouts, X.4.2 "bad connection" otherwise.
func netError(err error, stage reply.Stage, text string) *reply.Error {
	enh := reply.EnhancedCode{4, 4, 2}
	var ne net.Error
	if stage == reply.StageConnect || (errors.As(err, &ne) && ne.Timeout()) {
		enh = reply.EnhancedCode{4, 4, 1}
	}
	if errors.As(err, &ne) && ne.Timeout() {
		text += " (timeout)"
	}
	return &reply.Error{Code: 451, Enhanced: enh, Stage: stage, Text: text, Err: err}
}

func ctxError(ctx context.Context, stage reply.Stage) *reply.Error {
	return &reply.Error{Code: 451, Enhanced: reply.EnhancedCode{4, 4, 1}, Stage: stage,
		Text: "delivery attempt cancelled or timed out", Err: context.Cause(ctx)}
}
