// Package address owns the envelope address: the mailbox of MAIL FROM and
// RCPT TO (RFC 5321 §4.1.2), parsed once, from the client's own command
// line, into the one value that every later step uses. Sender rules,
// auth_users senders, the rewrite decision, the spool and the MAIL/RCPT
// line written to Exchange all see Mailbox.String(); nothing parses the
// client's text a second time.
//
// It sits under config, not relay, because config needs it too: the
// mailbox setting and the sender-rule and auth_users patterns are checked
// and compared with the same grammar and the same ASCII case folding (Fold)
// as the wire, and config imports nothing under relay/. Like config/secret
// it is a leaf: no SMTP library, nothing else from the module; a refusal
// is its own Error, which the listener turns into the reply
// (docs/architecture.md).
//
// The policy (docs/intake.md has the reasoning):
//   - A Dot-string local part passes as it came. A Quoted-string local part
//     is forwarded only if its content is printable ASCII without '"', '\'
//     (so no quoted-pair), '<', '>', '@', ',', ';', ':', '(', ')', '[',
//     ']', a leading or trailing space, and is not empty; it is written in
//     canonical form: unquoted when the content is a valid Dot-string (the
//     same mailbox, RFC 5322 §3.2.4: quotes are "semantically invisible"),
//     re-quoted otherwise. Anything else gets 553 with the reason.
//   - Non-ASCII (RFC 6531) only after SMTPUTF8 on MAIL, only in a
//     Dot-string or a domain, and only letters, marks and digits: a
//     character that Unicode folding could turn into '@', '.', '>' or a
//     space is refused (553 5.6.7 without SMTPUTF8, 553 otherwise).
//   - The domain is a Domain (LDH labels; U-labels with SMTPUTF8) or an
//     IPv4/IPv6 address literal, kept as the client wrote it; a general
//     address literal is refused.
//   - A source route (<@a,@b:user@c>) is checked and dropped: RFC 5321
//     §4.1.2 and appendix C say to ignore it, and the mailbox is user@c.
//   - Tolerated, as most servers do: a path without angle brackets, spaces
//     between the colon and the path, several spaces between parameters.
//   - Parameters: MAIL takes SIZE, BODY (7BIT, 8BITMIME), SMTPUTF8 and AUTH
//     (RFC 4954 §5; accepted and dropped); RCPT takes none. None is passed
//     on: the relay writes the MAIL parameters it chooses itself.
package address

import (
	"fmt"
	"strings"
)

// MaxLength is the longest mailbox accepted, in octets, without the angle
// brackets: RFC 5321 §4.5.3.1.3's 256-octet path less "<" and ">".
const MaxLength = 254

// Mailbox is one envelope mailbox in canonical RFC 5321 form. The zero
// value is the null reverse-path ("<>").
type Mailbox struct {
	local  string // Dot-string, or Quoted-string with its quotes
	domain string // Domain or address literal, as the client wrote it
}

// String is the wire form, Local-part "@" Domain without angle brackets,
// "" for the null path. It is what policy compares (case-insensitively)
// and what the relay writes after "MAIL FROM:<" and "RCPT TO:<". Its last
// '@' separates the local part from the domain (a domain holds no '@').
func (m Mailbox) String() string {
	if m.local == "" {
		return ""
	}
	return m.local + "@" + m.domain
}

// IsNull reports the null reverse-path.
func (m Mailbox) IsNull() bool { return m.local == "" }

// Local is the local part in wire form (quotes included, if any).
func (m Mailbox) Local() string { return m.local }

// Domain is the domain or address literal.
func (m Mailbox) Domain() string { return m.domain }

// Fold is the form policy compares addresses in: ASCII letters lower-cased
// (RFC 5321 §2.4: domains are case-insensitive; Exchange treats local
// parts so too), every other character as it is. Unicode case folding is
// not used: it maps characters that are not ASCII letters onto ASCII
// letters (KELVIN SIGN to "k"), so a sender could match a rule for an
// address other than the one written to Exchange.
func Fold(s string) string {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if 'A' <= b[j] && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// Mail is a parsed MAIL FROM command.
type Mail struct {
	From     Mailbox // IsNull for <>
	Size     int64   // SIZE= (RFC 1870), 0 if absent
	Body     string  // BODY= (RFC 6152): "", "7BIT" or "8BITMIME"
	SMTPUTF8 bool    // RFC 6531 §3.4
}

// Error is a refused command line or address: the reply the listener
// sends for it (smtpd turns it into an SMTP reply). It is the package's own
// type, not relay/reply's, so that config can use the same parser without
// depending on the relay.
type Error struct {
	Code     int    // basic reply code: 500, 501, 553 or 555
	Enhanced [3]int // RFC 3463 enhanced status code, e.g. {5, 1, 7}
	Text     string // what is wrong, safe to show the client and to log
}

func newError(code int, enh [3]int, text string) *Error {
	return &Error{Code: code, Enhanced: enh, Text: text}
}

// Error reads "501 5.1.7 Bad address syntax: …".
func (e *Error) Error() string {
	return fmt.Sprintf("%d %d.%d.%d %s", e.Code, e.Enhanced[0], e.Enhanced[1], e.Enhanced[2], e.Text)
}

// kind says which command an address belongs to, for the enhanced codes:
// RFC 3463 X.1.7 (sender syntax) or X.1.3 (recipient syntax).
type kind int

const (
	sender kind = iota
	recipient
)

func (k kind) code() [3]int {
	if k == sender {
		return [3]int{5, 1, 7}
	}
	return [3]int{5, 1, 3}
}

// syntaxErr is a path that is not RFC 5321 (501); refused is one that is,
// but that the relay does not forward (553, "mailbox name not allowed").
func (k kind) syntaxErr(format string, a ...any) *Error {
	return newError(501, k.code(), "Bad address syntax: "+fmt.Sprintf(format, a...)+" (RFC 5321 section 4.1.2)")
}

func (k kind) refused(format string, a ...any) *Error {
	return newError(553, k.code(), "Address not accepted: "+fmt.Sprintf(format, a...))
}

var errNeedUTF8 = newError(553, [3]int{5, 6, 7}, "Non-ASCII address requires the SMTPUTF8 parameter on MAIL FROM (RFC 6531)")

// ParseMail parses a whole MAIL command line as the client sent it (CRLF
// removed).
func ParseMail(line string) (Mail, *Error) {
	arg, rerr := commandArg(line, "MAIL", "FROM:", sender)
	if rerr != nil {
		return Mail{}, rerr
	}
	p := &parser{s: arg, k: sender}
	m := Mail{}
	if strings.HasPrefix(p.s, "<>") {
		p.s = p.s[2:]
		if p.s != "" && p.s[0] != ' ' {
			return Mail{}, sender.syntaxErr("unexpected %q after <>", cut(p.s))
		}
	} else if m.From, rerr = p.path(); rerr != nil {
		return Mail{}, rerr
	}
	params, rerr := parseParams(p.s)
	if rerr != nil {
		return Mail{}, rerr
	}
	if rerr := m.setParams(params); rerr != nil {
		return Mail{}, rerr
	}
	if !m.SMTPUTF8 && !isASCII(m.From.String()) {
		return Mail{}, errNeedUTF8
	}
	return m, nil
}

// ParseRcpt parses a whole RCPT command line (CRLF removed); smtputf8 says
// whether the transaction's MAIL had SMTPUTF8.
func ParseRcpt(line string, smtputf8 bool) (Mailbox, *Error) {
	arg, rerr := commandArg(line, "RCPT", "TO:", recipient)
	if rerr != nil {
		return Mailbox{}, rerr
	}
	if strings.HasPrefix(arg, "<>") {
		return Mailbox{}, recipient.syntaxErr("the null path <> is not a recipient")
	}
	p := &parser{s: arg, k: recipient}
	to, rerr := p.path()
	if rerr != nil {
		return Mailbox{}, rerr
	}
	params, rerr := parseParams(p.s)
	if rerr != nil {
		return Mailbox{}, rerr
	}
	if len(params) > 0 {
		return Mailbox{}, newError(555, [3]int{5, 5, 4}, fmt.Sprintf("RCPT parameter %s is not supported here", params[0].key))
	}
	if !smtputf8 && !isASCII(to.String()) {
		return Mailbox{}, errNeedUTF8
	}
	return to, nil
}

// Parse reads a bare mailbox (local@domain, no brackets, no parameters) by
// the same rules, for addresses the relay holds itself: a spooled envelope,
// a configured mailbox. Parse(m.String()) gives m back for every Mailbox
// the package made.
func Parse(s string, smtputf8 bool) (Mailbox, error) {
	p := &parser{s: s, k: sender}
	m, rerr := p.mailbox()
	switch {
	case rerr != nil:
		return Mailbox{}, rerr
	case p.s != "":
		return Mailbox{}, sender.syntaxErr("unexpected %q after the address", cut(p.s))
	case len(m.String()) > MaxLength:
		return Mailbox{}, newError(501, sender.code(), "Address too long (RFC 5321 section 4.5.3.1.3)")
	case !smtputf8 && !isASCII(s):
		return Mailbox{}, errNeedUTF8
	}
	return m, nil
}

// commandArg checks the verb and keyword the way go-smtp frames them (four
// letters, one space) and returns what follows the keyword, leading spaces
// removed.
func commandArg(line, verb, keyword string, k kind) (string, *Error) {
	if len(line) < 5 || !strings.EqualFold(line[:4], verb) || line[4] != ' ' {
		return "", newError(500, [3]int{5, 5, 2}, "Command not recognized")
	}
	rest := strings.TrimLeft(line[5:], " ")
	if len(rest) < len(keyword) || !strings.EqualFold(rest[:len(keyword)], keyword) {
		return "", newError(501, [3]int{5, 5, 2}, fmt.Sprintf("Syntax: %s %s<address>", verb, keyword))
	}
	return strings.TrimLeft(rest[len(keyword):], " "), nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// cut keeps client text quoted in a reply short and printable ASCII (a
// reply is ASCII, RFC 5321 §4.2).
func cut(s string) string {
	if len(s) > 40 {
		s = s[:40] + "..."
	}
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c >= 0x7f {
			b[i] = '?'
		}
	}
	return string(b)
}
