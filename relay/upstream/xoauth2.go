package upstream

import (
	"errors"
	"strings"

	"github.com/emersion/go-sasl"

	"github.com/o365relay/o365relay/config/secret"
)

// Mechanism is the SASL mechanism name, sent in upper case: Exchange Online
// is reported to refuse "xoauth2" (docs/exchange.md#xoauth2).
const Mechanism = "XOAUTH2"

// ErrBadUser is returned for an XOAUTH2 user name that would corrupt the
// payload (\x01 separates its fields) or the command line (CR, LF).
var ErrBadUser = errors.New("upstream: XOAUTH2 user name contains a control character (\\x01, CR or LF) or is empty")

// errBadToken: the token itself would corrupt the payload. The token is not
// quoted in the message.
var errBadToken = errors.New("upstream: access token contains a control character or is empty")

// CheckUser reports whether user can be sent as the XOAUTH2 user=.
func CheckUser(user string) error {
	if user == "" || strings.ContainsAny(user, "\x01\r\n") {
		return ErrBadUser
	}
	return nil
}

// XOAuth2Payload returns the un-encoded XOAUTH2 client response
// "user=" user "^Aauth=Bearer " token "^A^A" (docs/exchange.md#xoauth2,
// learn.microsoft.com …/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth).
// It does not validate its inputs; NewXOAuth2's Start does.
func XOAuth2Payload(user string, tok secret.Secret) secret.Secret {
	return secret.Secret("user=" + user + "\x01auth=Bearer " + tok.Reveal() + "\x01\x01")
}

// NewXOAuth2 returns a SASL client for XOAUTH2 in the two-step form: AUTH
// without an initial response, the payload after the server's empty 334.
// An initial response would make the AUTH line 2–4 KB long, over the SMTP
// line limit that RFC 4954 §4 says still applies; Microsoft's own example is
// two-step too. Any further challenge is Google's JSON error report; the
// answer is an empty response so that the server finishes with 535 (a nil
// response would make go-smtp treat the exchange as successful,
// docs/exchange.md#client-side).
func NewXOAuth2(user string, tok secret.Secret) sasl.Client {
	return &xoauth2{user: user, tok: tok}
}

type xoauth2 struct {
	user string
	tok  secret.Secret
	sent bool
}

func (x *xoauth2) Start() (string, []byte, error) {
	if err := CheckUser(x.user); err != nil {
		return "", nil, err
	}
	if v := x.tok.Reveal(); v == "" || strings.ContainsAny(v, "\x01\r\n ") {
		return "", nil, errBadToken
	}
	return Mechanism, nil, nil
}

func (x *xoauth2) Next(challenge []byte) ([]byte, error) {
	if !x.sent {
		x.sent = true
		return []byte(XOAuth2Payload(x.user, x.tok).Reveal()), nil
	}
	return []byte{}, nil
}
