package upstream

import (
	"errors"
	"fmt"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/o365relay/o365relay/relay/reply"
	"github.com/o365relay/o365relay/token"
)

func TestFromSMTPKeepsTheReplyExactly(t *testing.T) {
	e := FromSMTP(&smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 2, 252}, Message: "SendAsDenied"}, reply.StageData)
	if e.Code != 554 || e.Enhanced != (reply.EnhancedCode{5, 2, 252}) || e.Text != "SendAsDenied" || e.Stage != reply.StageData || e.Temporary() {
		t.Fatalf("FromSMTP = %+v", e)
	}
	if s := e.Error(); s != "554 5.2.252 SendAsDenied (at data)" {
		t.Fatalf("Error() = %q", s)
	}
}

// A token failure reaches the retry logic and the client as 451 4.7.0 at
// the token stage whatever Entra ID answered, naming the AADSTS code when
// there is one and keeping the explanation as the cause.
func TestTokenErrorIsAlways451AtTheTokenStage(t *testing.T) {
	refused := &token.EntraError{HTTPStatus: 401, OAuthError: "invalid_client", Codes: []int{700027}, Description: "Client assertion failed signature validation."}
	for _, tc := range []struct {
		err  error
		text string
	}{
		{refused, "Entra ID refused the token request (AADSTS700027); try again later"},
		{fmt.Errorf("refresh: %w", refused), "Entra ID refused the token request (AADSTS700027); try again later"},
		{&token.EntraError{Description: "dial tcp: connection refused"}, "Cannot obtain an access token from Entra ID; try again later"},
		{errors.New("no token source"), "Cannot obtain an access token from Entra ID; try again later"},
	} {
		re := tokenError(tc.err)
		if re.Code != 451 || re.Enhanced != (reply.EnhancedCode{4, 7, 0}) || re.Stage != reply.StageToken || !re.Temporary() || re.Text != tc.text {
			t.Errorf("tokenError(%v) = %+v, want 451 4.7.0 %q at token", tc.err, re, tc.text)
		}
		if !errors.Is(re, tc.err) {
			t.Errorf("tokenError(%v) lost its cause", tc.err)
		}
		if ee := token.AsEntraError(tc.err); ee != nil && token.AsEntraError(re) != ee {
			t.Errorf("errors.As does not find the *EntraError in %v", re)
		}
	}
}
