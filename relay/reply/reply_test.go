package reply

import (
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/emersion/go-smtp"
)

func TestForClientKeepsCodesThroughWrapping(t *testing.T) {
	up := FromSMTP(&smtp.SMTPError{Code: 432, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Concurrent connections limit exceeded"}, StageAuth)
	wrapped := fmt.Errorf("deliver: %w", up)
	got := ForClient(wrapped)
	if got.Code != 432 || got.EnhancedCode != (smtp.EnhancedCode{4, 3, 2}) || got.Message != "Concurrent connections limit exceeded" {
		t.Fatalf("ForClient lost the upstream reply: %+v", got)
	}
	if !Temporary(wrapped) {
		t.Fatal("432 must be temporary")
	}
}

func TestForClientUnknownErrorIsTransientAndHidesCause(t *testing.T) {
	got := ForClient(errors.New("open /var/spool/x: secret-path"))
	if got.Code != 451 || got.EnhancedCode[0] != 4 {
		t.Fatalf("unknown error must be transient, got %+v", got)
	}
	if got.Message == "" || contains(got.Message, "secret-path") {
		t.Fatalf("cause leaked to client: %q", got.Message)
	}
	if !Temporary(io.ErrUnexpectedEOF) {
		t.Fatal("network errors are temporary")
	}
}

func TestPermanent(t *testing.T) {
	e := FromSMTP(&smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 2, 252}, Message: "SendAsDenied"}, StageData)
	if e.Temporary() || Temporary(e) {
		t.Fatal("554 is permanent")
	}
	if s := e.Error(); s != "554 5.2.252 SendAsDenied (at data)" {
		t.Fatalf("Error() = %q", s)
	}
	if s := EnhancedString(451, smtp.EnhancedCodeNotSet); s != "4.0.0" {
		t.Fatalf("EnhancedString = %q", s)
	}
}

func TestBareSMTPErrorIsRecognised(t *testing.T) {
	err := fmt.Errorf("x: %w", smtp.ErrDataTooLarge)
	if got := ForClient(err); got.Code != 552 {
		t.Fatalf("got %+v", got)
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}
