// Package status owns the one structured view of a running relay: whether
// it is ready to take mail, and what the path to Exchange Online is doing
// (the token, the certificate, each mailbox's holds, the queue). The daemon
// builds it; the admin endpoint serves it as JSON at /status, the control
// socket serves the same document to `o365relay status`, the daemon's
// systemd STATUS= line is its Line, and `o365relay doctor` reads it from a
// running daemon. The Prometheus metrics are the same state as time series.
//
// Readiness and the path are separate on purpose: Ready says that mail
// handed over now is safe (the listener serves, the spool is writable and
// has room, the relay is not draining); the token, Exchange and mailbox
// holds never make the relay unready, they make mail wait in the spool and
// are reported here (docs/operations.md).
//
// The package is a leaf: plain data, no dependency on the relay's parts.
// Nothing secret is ever put in it (no token, key, password or body).
package status

import (
	"fmt"
	"strings"
	"time"
)

// Status is the whole view at one instant.
type Status struct {
	Time        time.Time    `json:"time"`
	Ready       Readiness    `json:"ready"`
	Token       Token        `json:"token"`
	Certificate *Certificate `json:"certificate,omitempty"`
	Mailboxes   []Mailbox    `json:"mailboxes"`
	Queue       Queue        `json:"queue"`
	Build       Build        `json:"build"`
}

// Readiness is /readyz's answer: OK when every check passed.
type Readiness struct {
	OK     bool    `json:"ok"`
	Checks []Check `json:"checks"`
}

// Check is one readiness condition.
type Check struct {
	Name  string `json:"name"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// Token states.
const (
	TokenValid   = "valid"   // a token is held and the last request succeeded
	TokenFailing = "failing" // a token is held, but refreshing it fails
	TokenNone    = "none"    // no usable token: delivery waits
)

// Token is the Entra ID token source's state.
type Token struct {
	State string `json:"state"`
	// Credential is what signs the token requests: certificate, secret,
	// federated (workload identity) or a managed identity.
	Credential  string    `json:"credential,omitempty"`
	ExpiresAt   time.Time `json:"expires_at,omitzero"`
	LastSuccess time.Time `json:"last_success,omitzero"`
	NextRefresh time.Time `json:"next_refresh,omitzero"`
	// LastError is the last failed request's explanation (AADSTS code,
	// description and hint); empty after a success.
	LastError string `json:"last_error,omitempty"`
	// AADSTS is the AADSTS code of LastError, 0 when it had none.
	AADSTS int `json:"aadsts,omitempty"`
}

// Certificate is the client-assertion certificate in use.
type Certificate struct {
	Subject    string    `json:"subject"`
	Thumbprint string    `json:"thumbprint_sha1"`
	NotAfter   time.Time `json:"not_after"`
	Path       string    `json:"path,omitempty"`
}

// Mailbox is one mailbox's delivery health.
type Mailbox struct {
	Name string `json:"name"`
	// Held says delivery is paused: Reason says why (a token failure, an
	// AUTH refusal, a full mailbox, a quota, throttling) and HeldUntil when
	// the next probe attempt may run.
	Held      bool      `json:"held"`
	Reason    string    `json:"reason,omitempty"`
	HeldUntil time.Time `json:"held_until,omitzero"`
}

// Queue is the spool's content.
type Queue struct {
	Messages int       `json:"messages"`
	Bytes    int64     `json:"bytes"`
	Oldest   time.Time `json:"oldest_received,omitzero"`
	// Limits (spool_max_messages, spool_max_bytes); 0 is unlimited.
	MaxMessages int   `json:"max_messages,omitempty"`
	MaxBytes    int64 `json:"max_bytes,omitempty"`
}

// Problems lists, for a person, why mail is not flowing to Exchange now:
// empty when nothing holds it back. Readiness problems come first.
func (s *Status) Problems() []string {
	var out []string
	for _, c := range s.Ready.Checks {
		if !c.OK {
			out = append(out, fmt.Sprintf("not ready (%s): %s", c.Name, c.Error))
		}
	}
	switch s.Token.State {
	case TokenNone:
		why := s.Token.LastError
		if why == "" {
			why = "no answer from Entra ID yet"
		}
		out = append(out, "no token from Entra ID, so nothing can be delivered; mail waits in the spool: "+why)
	case TokenFailing:
		out = append(out, fmt.Sprintf("token refresh failing (the held token is valid until %s): %s",
			clock(s.Token.ExpiresAt), s.Token.LastError))
	}
	for _, m := range s.Mailboxes {
		if m.Held {
			out = append(out, fmt.Sprintf("mailbox %s held until %s: %s", m.Name, clock(m.HeldUntil), m.Reason))
		}
	}
	return out
}

// Line is the one-line summary for systemd's STATUS= (sd_notify(3)), shown
// by `systemctl status`: readiness, the token, held mailboxes and the queue.
// It changes only when the state does (times, not ages), so the daemon can
// send it on change.
func (s *Status) Line() string {
	var parts []string
	if s.Ready.OK {
		parts = append(parts, "ready")
	} else {
		var why []string
		for _, c := range s.Ready.Checks {
			if !c.OK {
				why = append(why, c.Name+": "+short(c.Error, 80))
			}
		}
		parts = append(parts, "NOT READY ("+strings.Join(why, "; ")+")")
	}
	switch s.Token.State {
	case TokenValid:
		parts = append(parts, "token valid until "+clock(s.Token.ExpiresAt))
	case TokenFailing:
		parts = append(parts, "token refresh failing, held until "+clock(s.Token.ExpiresAt)+": "+short(s.Token.LastError, 60))
	default:
		why := "waiting for Entra ID"
		if s.Token.LastError != "" {
			why = short(s.Token.LastError, 80)
		}
		parts = append(parts, "no token ("+why+")")
	}
	for _, m := range s.Mailboxes {
		if m.Held {
			parts = append(parts, fmt.Sprintf("mailbox %s held until %s (%s)", m.Name, clock(m.HeldUntil), short(m.Reason, 40)))
		}
	}
	q := fmt.Sprintf("%d queued", s.Queue.Messages)
	if !s.Queue.Oldest.IsZero() {
		q += ", oldest since " + clock(s.Queue.Oldest)
	}
	return strings.Join(append(parts, q), "; ")
}

// clock formats t for a line: UTC, seconds.
func clock(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

// short cuts s to n runes at most, on one line.
func short(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}
