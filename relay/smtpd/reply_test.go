package smtpd

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/o365relay/o365relay/config/address"
	"github.com/o365relay/o365relay/relay/reply"
)

func TestForClientKeepsCodesThroughWrapping(t *testing.T) {
	up := &reply.Error{Code: 432, Enhanced: reply.EnhancedCode{4, 3, 2}, Text: "Concurrent connections limit exceeded", Stage: reply.StageAuth}
	got := ForClient(fmt.Errorf("deliver: %w", up))
	if got.Code != 432 || got.EnhancedCode != (smtp.EnhancedCode{4, 3, 2}) || got.Message != "Concurrent connections limit exceeded" {
		t.Fatalf("ForClient lost the reply: %+v", got)
	}
}

func TestForClientUnknownErrorIsTransientAndHidesCause(t *testing.T) {
	got := ForClient(errors.New("open /var/spool/x: secret-path"))
	if got.Code != 451 || got.EnhancedCode != (smtp.EnhancedCode{4, 3, 0}) {
		t.Fatalf("unknown error must be transient, got %+v", got)
	}
	if got.Message == "" || strings.Contains(got.Message, "secret-path") {
		t.Fatalf("cause leaked to client: %q", got.Message)
	}
	if ForClient(nil) != nil {
		t.Fatal("ForClient(nil) is not nil")
	}
}

func TestForClientPassesGoSMTPRepliesThrough(t *testing.T) {
	if got := ForClient(fmt.Errorf("x: %w", smtp.ErrDataTooLarge)); got.Code != 552 || got.EnhancedCode != smtp.ErrDataTooLarge.EnhancedCode {
		t.Fatalf("got %+v", got)
	}
}

// The special enhanced codes convert by a plain type conversion only while
// reply's values are go-smtp's: this fails if a go-smtp upgrade changes
// them.
func TestEnhancedCodeSentinelsAreGoSMTPs(t *testing.T) {
	if smtp.EnhancedCode(reply.NoEnhancedCode) != smtp.NoEnhancedCode || smtp.EnhancedCode(reply.EnhancedCodeNotSet) != smtp.EnhancedCodeNotSet {
		t.Fatalf("reply's NoEnhancedCode %v / EnhancedCodeNotSet %v differ from go-smtp's %v / %v",
			reply.NoEnhancedCode, reply.EnhancedCodeNotSet, smtp.NoEnhancedCode, smtp.EnhancedCodeNotSet)
	}
}

func TestForClientKeepsAddressRefusals(t *testing.T) {
	_, err := address.ParseRcpt("RCPT TO:<a@b> NOTIFY=NEVER", false)
	if err == nil {
		t.Fatal("RCPT parameter accepted")
	}
	got := ForClient(err)
	if got.Code != err.Code || got.EnhancedCode != smtp.EnhancedCode(err.Enhanced) || got.Message != err.Text || got.Code != 555 {
		t.Fatalf("ForClient(%v) = %+v", err, got)
	}
}
