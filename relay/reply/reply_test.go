package reply

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

func TestAsFindsTheReplyThroughWrapping(t *testing.T) {
	up := &Error{Code: 432, Enhanced: EnhancedCode{4, 3, 2}, Text: "Concurrent connections limit exceeded", Stage: StageAuth}
	wrapped := fmt.Errorf("deliver: %w", up)
	if got := As(wrapped); got != up {
		t.Fatalf("As lost the reply: %+v", got)
	}
	if !Temporary(wrapped) {
		t.Fatal("432 must be temporary")
	}
	if As(errors.New("plain")) != nil || As(nil) != nil {
		t.Fatal("As found a reply in an error without one")
	}
}

func TestUnknownErrorIsTemporary(t *testing.T) {
	if !Temporary(io.ErrUnexpectedEOF) {
		t.Fatal("network errors are temporary")
	}
}

func TestPermanent(t *testing.T) {
	e := &Error{Code: 554, Enhanced: EnhancedCode{5, 2, 252}, Text: "SendAsDenied", Stage: StageData}
	if e.Temporary() || Temporary(e) {
		t.Fatal("554 is permanent")
	}
	if s := e.Error(); s != "554 5.2.252 SendAsDenied (at data)" {
		t.Fatalf("Error() = %q", s)
	}
}

func TestEnhancedString(t *testing.T) {
	for _, tc := range []struct {
		code int
		enh  EnhancedCode
		want string
	}{
		{451, EnhancedCodeNotSet, "4.0.0"},
		{250, NoEnhancedCode, ""},
		{550, EnhancedCode{5, 7, 60}, "5.7.60"},
	} {
		if s := EnhancedString(tc.code, tc.enh); s != tc.want {
			t.Errorf("EnhancedString(%d, %v) = %q, want %q", tc.code, tc.enh, s, tc.want)
		}
	}
}

func TestWrapKeepsTheCauseOutOfTheText(t *testing.T) {
	e := Wrap(errors.New("open /var/spool/x: secret-path"), 451, EnhancedCode{4, 3, 0}, "Local error")
	if strings.Contains(e.Text, "secret-path") || !strings.Contains(e.Error(), "secret-path") || e.Stage != StageLocal {
		t.Fatalf("Wrap: text %q, Error() %q, stage %q", e.Text, e.Error(), e.Stage)
	}
}
