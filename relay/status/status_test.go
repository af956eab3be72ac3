package status

import (
	"strings"
	"testing"
	"time"
)

func TestLineAndProblems(t *testing.T) {
	at := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	ready := Readiness{OK: true, Checks: []Check{{Name: "spool", OK: true}}}
	for _, tc := range []struct {
		name     string
		st       Status
		line     string
		problems []string
	}{
		{"healthy", Status{Ready: ready, Token: Token{State: TokenValid, ExpiresAt: at}},
			"ready; token valid until 2026-03-04 05:06:07Z; 0 queued", nil},
		{"no token", Status{Ready: ready, Token: Token{State: TokenNone, LastError: "AADSTS7000215: Invalid client secret provided.\n  hint"},
			Mailboxes: []Mailbox{{Name: "a@contoso.example", Held: true, Reason: "4.7.0", HeldUntil: at}, {Name: "b@contoso.example"}},
			Queue:     Queue{Messages: 3, Oldest: at}},
			"ready; no token (AADSTS7000215: Invalid client secret provided. hint); mailbox a@contoso.example held until 2026-03-04 05:06:07Z (4.7.0); 3 queued, oldest since 2026-03-04 05:06:07Z",
			[]string{"no token from Entra ID", "mailbox a@contoso.example held until 2026-03-04 05:06:07Z: 4.7.0"}},
		{"not ready, refresh failing", Status{Ready: Readiness{Checks: []Check{{Name: "spool", Error: "spool full: 5 messages"}, {Name: "draining", OK: true}}},
			Token: Token{State: TokenFailing, ExpiresAt: at, LastError: "network"}},
			"NOT READY (spool: spool full: 5 messages); token refresh failing, held until 2026-03-04 05:06:07Z: network; 0 queued",
			[]string{"not ready (spool): spool full: 5 messages", "token refresh failing"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.st.Line(); got != tc.line {
				t.Errorf("Line:\n got %q\nwant %q", got, tc.line)
			}
			ps := tc.st.Problems()
			if len(ps) != len(tc.problems) {
				t.Fatalf("Problems %q, want %d", ps, len(tc.problems))
			}
			for i, p := range tc.problems {
				if !strings.Contains(ps[i], p) {
					t.Errorf("problem %d %q lacks %q", i, ps[i], p)
				}
			}
		})
	}
	long := Status{Token: Token{State: TokenNone, LastError: strings.Repeat("é", 500)}}
	if l := long.Line(); len([]rune(l)) > 200 {
		t.Errorf("a long error makes a %d-rune STATUS= line", len([]rune(l)))
	}
}
