package config

import (
	"fmt"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/o365relay/o365relay/config/address"
)

// SenderRule maps envelope senders to the mailbox the relay authenticates
// as (XOAUTH2 user=). It is one item of the config file's `senders` list:
//
//	senders:
//	  - sender: billing@app.example      # an exact address
//	    mailbox: billing@contoso.com
//	  - sender: "*@app.example"          # any address at a domain
//	    mailbox: apps@contoso.com
//	    rewrite: envelope+from           # none (default), envelope, envelope+from
//	  - sender: "*"                      # everything else (optional)
//
// The most specific rule wins whatever the order: an exact address, then
// its domain, then the catch-all. Addresses and domains match without
// regard to ASCII case (Exchange treats them so; address.Fold), against the
// canonical form the intake parsed. The null sender (bounces) only
// matches the catch-all. A rule without mailbox uses the `mailbox` setting.
type SenderRule struct {
	Sender  string
	Mailbox string
	Rewrite Rewrite
	Line    int // in the config file, for messages
}

// Rewrite is a sender rule's rewrite setting (senders[].rewrite): which of a
// message's sender addresses the relay replaces with the mailbox on the way
// to Exchange. It is a value; relay maps it to what relay/rewrite applies.
type Rewrite int

const (
	RewriteNone         Rewrite = iota // "none" (the default): as the application gave it
	RewriteEnvelope                    // "envelope": the MAIL FROM address
	RewriteEnvelopeFrom                // "envelope+from": MAIL FROM and the From: header
)

// parseRewrite reads the config spelling: "" or "none", "envelope",
// "envelope+from".
func parseRewrite(s string) (Rewrite, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "none":
		return RewriteNone, nil
	case "envelope":
		return RewriteEnvelope, nil
	case "envelope+from":
		return RewriteEnvelopeFrom, nil
	}
	return RewriteNone, fmt.Errorf("%q is not none, envelope or envelope+from", s)
}

// String is the config spelling.
func (r Rewrite) String() string {
	switch r {
	case RewriteEnvelope:
		return "envelope"
	case RewriteEnvelopeFrom:
		return "envelope+from"
	}
	return "none"
}

// MailboxLimits are one mailbox's limits; 0 disables Rate or
// DailyRecipients. They come from mailbox_connections, mailbox_rate and
// mailbox_daily_recipients unless the file's `mailboxes` map overrides
// them:
//
//	mailboxes:
//	  bulk@contoso.com: {connections: 2, rate: 60, daily_recipients: 20000}
type MailboxLimits struct {
	Connections     int
	Rate            int // messages per minute
	DailyRecipients int // per rolling 24 h
}

// fileRules are the structured parts of the config file.
type fileRules struct {
	senders   []SenderRule
	mailboxes map[string]mailboxOverride
	line      map[string]int // line of each structured key
}

type mailboxOverride struct {
	connections, rate, daily *int
	line                     int
}

// structuredKeys are file-only settings that are not key: value scalars;
// FileOnly documents them.
var structuredKeys = map[string]bool{"senders": true, "mailboxes": true}

// FileOnlySetting documents a setting that exists only in the config file.
type FileOnlySetting struct{ Key, Doc string }

// FileOnly lists the config-file-only settings, for the reference table.
func FileOnly() []FileOnlySetting {
	return []FileOnlySetting{
		{"senders", "List of sender rules: `sender` (an address, `*@domain` or `*`), `mailbox` (default: `mailbox`), `rewrite` (`none`, `envelope`, `envelope+from`). When set, a sender no rule matches gets 550 5.7.1 at MAIL FROM; unset, every sender uses `mailbox`. See Sender rules."},
		{"mailboxes", "Map of mailbox address to `{connections, rate, daily_recipients}` overriding mailbox_connections, mailbox_rate and mailbox_daily_recipients for that mailbox (0 disables rate or daily_recipients)."},
	}
}

// parseStructured reads the file's senders or mailboxes key into fr.
func parseStructured(path string, k, v *yaml.Node, fr *fileRules) []error {
	fr.line[k.Value] = k.Line
	e := &nodeErrs{path: path, key: k.Value}
	switch k.Value {
	case "senders":
		parseSenders(v, fr, e)
	case "mailboxes":
		parseMailboxes(v, fr, e)
	}
	return e.errs
}

// parseSenders reads the senders list: one rule per item, each sender once.
func parseSenders(v *yaml.Node, fr *fileRules, e *nodeErrs) {
	if v.Kind != yaml.SequenceNode {
		e.bad(v, "expected a list of rules (- sender: ADDRESS, mailbox: MAILBOX), found %s", kindName(v))
		return
	}
	seen := map[string]int{}
	for _, it := range v.Content {
		if it.Kind != yaml.MappingNode {
			e.bad(it, "each rule must be a mapping with sender, mailbox and rewrite, found %s", kindName(it))
			continue
		}
		r := parseSenderRule(it, e)
		if r.Sender == "" {
			e.bad(it, "rule without sender; add sender: ADDRESS, \"*@domain\" or \"*\"")
			continue
		}
		if first, dup := seen[r.Sender]; dup {
			e.bad(it, "a rule for %s is already on line %d", r.Sender, first)
			continue
		}
		seen[r.Sender] = it.Line
		fr.senders = append(fr.senders, r)
	}
}

// parseSenderRule reads the fields of one sender rule (a mapping); the
// caller checks that it has a sender.
func parseSenderRule(it *yaml.Node, e *nodeErrs) SenderRule {
	r := SenderRule{Line: it.Line}
	for i := 0; i+1 < len(it.Content); i += 2 {
		fk, fv := it.Content[i], it.Content[i+1]
		if fv.Kind != yaml.ScalarNode {
			e.bad(fk, "%s must be a single value", fk.Value)
			continue
		}
		switch fk.Value {
		case "sender":
			p, err := parseSenderPattern(fv.Value)
			if err != nil {
				e.bad(fk, "%v", err)
			}
			r.Sender = p
		case "mailbox":
			m, err := parseMailbox(fv.Value)
			if err != nil {
				e.bad(fk, "mailbox %v", err)
			}
			r.Mailbox = m
		case "rewrite":
			rw, err := parseRewrite(fv.Value)
			if err != nil {
				e.bad(fk, "rewrite %v", err)
			}
			r.Rewrite = rw
		default:
			e.bad(fk, "unknown field %q in a sender rule (sender, mailbox, rewrite)", fk.Value)
		}
	}
	return r
}

// parseMailboxes reads the mailboxes mapping: per-mailbox limits, each
// mailbox once (compared in lower case).
func parseMailboxes(v *yaml.Node, fr *fileRules, e *nodeErrs) {
	if v.Kind != yaml.MappingNode {
		e.bad(v, "expected a mapping of mailbox: {connections, rate, daily_recipients}, found %s", kindName(v))
		return
	}
	for i := 0; i+1 < len(v.Content); i += 2 {
		mk, mv := v.Content[i], v.Content[i+1]
		addr, err := parseMailbox(mk.Value)
		if err != nil || addr == "" {
			e.bad(mk, "%q is not a mailbox address", mk.Value)
			continue
		}
		if mv.Kind != yaml.MappingNode {
			e.bad(mk, "%s: expected {connections, rate, daily_recipients}, found %s", addr, kindName(mv))
			continue
		}
		key := strings.ToLower(addr)
		if _, dup := fr.mailboxes[key]; dup {
			e.bad(mk, "%s is listed twice", addr)
			continue
		}
		fr.mailboxes[key] = parseMailboxOverride(addr, mk, mv, e)
	}
}

// parseMailboxOverride reads one mailbox's {connections, rate,
// daily_recipients}.
func parseMailboxOverride(addr string, mk, mv *yaml.Node, e *nodeErrs) mailboxOverride {
	o := mailboxOverride{line: mk.Line}
	for j := 0; j+1 < len(mv.Content); j += 2 {
		fk, fv := mv.Content[j], mv.Content[j+1]
		n, err := parseCount(fv.Value)
		if fv.Kind != yaml.ScalarNode || err != nil {
			e.bad(fk, "%s.%s: %q is not a whole number ≥ 0", addr, fk.Value, fv.Value)
			continue
		}
		switch fk.Value {
		case "connections":
			if n == 0 {
				e.bad(fk, "%s.connections must be at least 1", addr)
			}
			o.connections = &n
		case "rate":
			o.rate = &n
		case "daily_recipients":
			o.daily = &n
		default:
			e.bad(fk, "unknown field %q for %s (connections, rate, daily_recipients)", fk.Value, addr)
		}
	}
	return o
}

// parseSenderPattern accepts an address, *@domain or *.
func parseSenderPattern(v string) (string, error) {
	p := address.Fold(strings.TrimSpace(v))
	if p == "*" {
		return p, nil
	}
	if strings.ContainsAny(p, "\x00\r\n\t <>") {
		return "", fmt.Errorf("sender %q must be an address, \"*@domain\" or \"*\"", v)
	}
	at := strings.LastIndexByte(p, '@')
	if at <= 0 || at == len(p)-1 || strings.Contains(p[at+1:], "*") || (strings.Contains(p[:at], "*") && p[:at] != "*") {
		return "", fmt.Errorf("sender %q must be an address (app@example.com), \"*@domain\" or \"*\"", v)
	}
	return p, nil
}

// applyRules checks the file's rules against the rest of the configuration.
func (c *Config) applyRules(path string, fr *fileRules) []error {
	var errs []error
	c.Senders = fr.senders
	for _, r := range c.Senders {
		if r.Mailbox == "" && c.Mailbox == "" {
			errs = append(errs, &Error{Key: "senders", Where: fmt.Sprintf("%s:%d senders", path, r.Line),
				Reason: fmt.Sprintf("the rule for %s names no mailbox and the mailbox setting (O365RELAY_MAILBOX) is not set; add mailbox: to the rule or set mailbox", r.Sender)})
		}
	}
	c.mailboxOverrides = map[string]MailboxLimits{}
	used := map[string]bool{strings.ToLower(c.Mailbox): true}
	for _, m := range c.Mailboxes() {
		used[strings.ToLower(m)] = true
	}
	for k, o := range fr.mailboxes {
		l := MailboxLimits{Connections: c.MailboxConnections, Rate: c.MailboxRate, DailyRecipients: c.MailboxDailyRecipients}
		if o.connections != nil {
			l.Connections = *o.connections
		}
		if o.rate != nil {
			l.Rate = *o.rate
		}
		if o.daily != nil {
			l.DailyRecipients = *o.daily
		}
		c.mailboxOverrides[k] = l
		if !used[k] {
			c.Warnings = append(c.Warnings, fmt.Sprintf("%s:%d mailboxes: %s is not the mailbox setting nor used by any sender rule; its limits have no effect", path, o.line, k))
		}
	}
	return errs
}

// matchSender returns the rule for sender: exact address, then *@domain,
// then *. Without rules every sender maps to the mailbox setting.
func (c *Config) matchSender(sender string) (SenderRule, bool) {
	if len(c.Senders) == 0 {
		return SenderRule{Sender: "*", Mailbox: c.Mailbox}, true
	}
	s := address.Fold(sender) // as the intake wrote it (docs/intake.md)
	domain := ""
	if at := strings.LastIndexByte(s, '@'); at >= 0 && s != "" {
		domain = "*" + s[at:]
	}
	var best *SenderRule
	rank := 0
	for i := range c.Senders {
		r := &c.Senders[i]
		n := 0
		switch {
		case s != "" && r.Sender == s:
			n = 3
		case domain != "" && r.Sender == domain:
			n = 2
		case r.Sender == "*":
			n = 1
		}
		if n > rank {
			best, rank = r, n
		}
	}
	if best == nil {
		return SenderRule{}, false
	}
	out := *best
	if out.Mailbox == "" {
		out.Mailbox = c.Mailbox
	}
	return out, true
}

// Route maps an envelope sender to its mailbox, for the intake's MAIL FROM.
// ok is false when no rule matches the sender: the listener then refuses it
// (550 5.7.1, naming the senders setting).
func (c *Config) Route(sender string) (mailbox string, ok bool) {
	r, ok := c.matchSender(sender)
	return r.Mailbox, ok
}

// RewriteFor is how the rule matching sender rewrites its messages
// (RewriteNone when no rule matches).
func (c *Config) RewriteFor(sender string) Rewrite {
	r, ok := c.matchSender(sender)
	if !ok {
		return RewriteNone
	}
	return r.Rewrite
}

// rulesSummary renders the sender rules and mailbox overrides for
// Effective (and so for reload's "what changed").
func (c *Config) rulesSummary() (senders, mailboxes string) {
	var ss []string
	for _, r := range c.Senders {
		mb := r.Mailbox
		if mb == "" {
			mb = "mailbox"
		}
		ss = append(ss, fmt.Sprintf("%s→%s rewrite=%s", r.Sender, mb, r.Rewrite))
	}
	var ms []string
	for k, l := range c.mailboxOverrides {
		ms = append(ms, fmt.Sprintf("%s:%d/%d/%d", k, l.Connections, l.Rate, l.DailyRecipients))
	}
	sort.Strings(ms)
	return strings.Join(ss, ","), strings.Join(ms, ",")
}

// Mailboxes lists every mailbox the configuration can route to: the
// mailbox setting (if set) and each rule's, without duplicates.
func (c *Config) Mailboxes() []string {
	var out []string
	seen := map[string]bool{}
	add := func(m string) {
		if m != "" && !seen[strings.ToLower(m)] {
			seen[strings.ToLower(m)] = true
			out = append(out, m)
		}
	}
	add(c.Mailbox)
	for _, r := range c.Senders {
		add(r.Mailbox)
	}
	return out
}

// Limits returns mailbox's limits: its entry in the file's mailboxes map,
// or the global settings.
func (c *Config) Limits(mailbox string) MailboxLimits {
	if l, ok := c.mailboxOverrides[strings.ToLower(mailbox)]; ok {
		return l
	}
	return MailboxLimits{Connections: c.MailboxConnections, Rate: c.MailboxRate, DailyRecipients: c.MailboxDailyRecipients}
}

// TotalConnections is the sum of every routable mailbox's connection limit:
// enough delivery workers for all of them to be busy at once.
func (c *Config) TotalConnections() int {
	n := 0
	for _, m := range c.Mailboxes() {
		n += c.Limits(m).Connections
	}
	return max(n, c.MailboxConnections)
}
