package upstream

import (
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/o365relay/o365relay/relay/reply"
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
