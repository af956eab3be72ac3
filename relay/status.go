package relay

import (
	"context"
	"errors"
	"sort"
	"strings"

	"github.com/o365relay/o365relay/relay/status"
	"github.com/o365relay/o365relay/token"
)

// Status builds the structured view (relay/status) from the parts' own
// state: readiness, the token source, the certificate in use, the
// scheduler's mailbox health and the spool's counters. Every configured
// mailbox is listed, held or not.
func (r *Relay) Status(ctx context.Context) status.Status {
	st := status.Status{
		Time:  r.clock(),
		Ready: r.Readiness(ctx),
		Token: r.tokenStatus(),
		Build: r.build,
	}
	if c := r.tokens.Certificate(); c != nil {
		st.Certificate = &status.Certificate{
			Subject:    c.Leaf.Subject.String(),
			Thumbprint: c.ThumbprintSHA1Hex(),
			NotAfter:   c.NotAfter(),
			Path:       r.cfg.CertificatePath,
		}
	}
	health := r.sched.Health()
	seen := map[string]bool{}
	add := func(name string) {
		if seen[strings.ToLower(name)] {
			return
		}
		seen[strings.ToLower(name)] = true
		m := status.Mailbox{Name: name}
		if h, ok := health[name]; ok && !h.Healthy {
			m.Held, m.Reason = true, h.Reason
			if h.Cause != "" && h.Cause != h.Reason {
				m.Reason = h.Cause + " " + h.Reason // e.g. "tls 4.7.5"
			}
			if now := st.Time; h.HeldUntil.After(now) {
				m.HeldUntil = h.HeldUntil
			}
		}
		st.Mailboxes = append(st.Mailboxes, m)
	}
	for _, name := range r.cfg.Mailboxes() {
		add(name)
	}
	others := make([]string, 0, len(health))
	for name := range health {
		others = append(others, name)
	}
	sort.Strings(others)
	for _, name := range others { // queued under a rule since removed
		add(name)
	}
	items, size, oldest := r.sp.Stats()
	st.Queue = status.Queue{Messages: items, Bytes: size, Oldest: oldest,
		MaxMessages: r.cfg.SpoolMaxItems, MaxBytes: r.cfg.SpoolMaxBytes}
	return st
}

func (r *Relay) tokenStatus() status.Token {
	ts := r.tokens.Status()
	out := status.Token{
		Credential:  r.cfg.Credential(),
		LastSuccess: ts.LastRefresh,
		NextRefresh: ts.NextRefresh,
	}
	if ts.LastError != nil {
		out.LastError = ts.LastError.Error()
		if ee := (*token.EntraError)(nil); errors.As(ts.LastError, &ee) {
			out.LastError = ee.Error()
			out.AADSTS = ee.Code()
		}
	}
	switch {
	case ts.HasToken && ts.LastError == nil:
		out.State, out.ExpiresAt = status.TokenValid, ts.ExpiresOn
	case ts.HasToken:
		out.State, out.ExpiresAt = status.TokenFailing, ts.ExpiresOn
	default:
		out.State = status.TokenNone
	}
	return out
}
