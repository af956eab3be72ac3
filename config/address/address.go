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
	"net/netip"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
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
	for _, pr := range params {
		switch pr.key {
		case "SIZE":
			n, err := strconv.ParseInt(pr.value, 10, 64)
			if !pr.hasValue || err != nil || n < 0 || strings.TrimLeft(pr.value, "0123456789") != "" {
				return Mail{}, newError(501, [3]int{5, 5, 4}, "SIZE= needs a number of octets (RFC 1870)")
			}
			m.Size = n
		case "BODY":
			switch strings.ToUpper(pr.value) {
			case "7BIT", "8BITMIME":
				m.Body = strings.ToUpper(pr.value)
			default:
				return Mail{}, newError(501, [3]int{5, 5, 4}, "BODY= must be 7BIT or 8BITMIME (RFC 6152)")
			}
		case "SMTPUTF8":
			if pr.hasValue {
				return Mail{}, newError(501, [3]int{5, 5, 4}, "SMTPUTF8 takes no value (RFC 6531)")
			}
			m.SMTPUTF8 = true
		case "AUTH":
			// RFC 4954 §5: the submitter's identity, asserted by a
			// client this relay does not trust to assert it. Dropped;
			// never passed on.
			if !pr.hasValue {
				return Mail{}, newError(501, [3]int{5, 5, 4}, "AUTH= needs a value (RFC 4954 section 5)")
			}
		default:
			return Mail{}, newError(555, [3]int{5, 5, 4}, fmt.Sprintf("MAIL parameter %s is not supported here", pr.key))
		}
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

// parser reads one path from the front of s. Non-ASCII is parsed
// wherever RFC 6531 allows it; whether SMTPUTF8 allows it is checked by
// the caller.
type parser struct {
	s string
	k kind
}

// path reads "<" [A-d-l ":"] Mailbox ">", or a bare Mailbox.
func (p *parser) path() (Mailbox, *Error) {
	if p.s == "" {
		return Mailbox{}, p.k.syntaxErr("no address")
	}
	bracket := p.s[0] == '<'
	if bracket {
		p.s = p.s[1:]
		if strings.HasPrefix(p.s, "@") {
			if rerr := p.route(); rerr != nil {
				return Mailbox{}, rerr
			}
		}
	}
	m, rerr := p.mailbox()
	if rerr != nil {
		return Mailbox{}, rerr
	}
	if bracket {
		if !strings.HasPrefix(p.s, ">") {
			return Mailbox{}, p.k.syntaxErr("the address must end with '>'")
		}
		p.s = p.s[1:]
	}
	if p.s != "" && p.s[0] != ' ' {
		return Mailbox{}, p.k.syntaxErr("unexpected %q after the address", cut(p.s))
	}
	if len(m.String()) > MaxLength {
		return Mailbox{}, newError(501, p.k.code(), "Address too long (RFC 5321 section 4.5.3.1.3)")
	}
	return m, nil
}

// route reads and drops A-d-l ":" (At-domain *( "," At-domain )).
func (p *parser) route() *Error {
	for {
		p.s = p.s[1:] // '@'
		if _, rerr := p.domainName(); rerr != nil {
			return rerr
		}
		switch {
		case strings.HasPrefix(p.s, ",@"):
			p.s = p.s[1:]
		case strings.HasPrefix(p.s, ":"):
			p.s = p.s[1:]
			return nil
		default:
			return p.k.syntaxErr("malformed source route")
		}
	}
}

// mailbox reads Local-part "@" ( Domain / address-literal ).
func (p *parser) mailbox() (Mailbox, *Error) {
	var local string
	var rerr *Error
	if strings.HasPrefix(p.s, `"`) {
		local, rerr = p.quoted()
	} else {
		local, rerr = p.dotString()
	}
	if rerr != nil {
		return Mailbox{}, rerr
	}
	if !strings.HasPrefix(p.s, "@") {
		return Mailbox{}, p.k.syntaxErr("the address must be local-part@domain")
	}
	p.s = p.s[1:]
	var domain string
	if strings.HasPrefix(p.s, "[") {
		domain, rerr = p.literal()
	} else {
		domain, rerr = p.domainName()
	}
	if rerr != nil {
		return Mailbox{}, rerr
	}
	return Mailbox{local: local, domain: domain}, nil
}

// isAtext is RFC 5321's atext (RFC 5322 §3.2.3) for ASCII.
func isAtext(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// safeRune is the non-ASCII allowed in a local part or a U-label: a letter,
// mark or digit. Punctuation, symbols and spaces are refused because
// compatibility folding (fullwidth '＠', '．', '＞') could make them
// structure at the next hop.
func safeRune(r rune) bool {
	return r >= 0x80 && r != utf8.RuneError && (unicode.IsLetter(r) || unicode.IsMark(r) || unicode.IsDigit(r))
}

// letter checks the non-ASCII character at p.s[i] (in the part named
// where) and returns its length.
func (p *parser) letter(i int, where string) (int, *Error) {
	r, n := utf8.DecodeRuneInString(p.s[i:])
	if r == utf8.RuneError && n <= 1 {
		return 0, p.k.syntaxErr("the address is not valid UTF-8")
	}
	if !safeRune(r) {
		return 0, p.k.refused("the character %U in the %s could be read as another character by the next server", r, where)
	}
	return n, nil
}

// dotString reads Atom *("." Atom).
func (p *parser) dotString() (string, *Error) {
	i, atomLen := 0, 0
	for i < len(p.s) {
		c := p.s[i]
		switch {
		case isAtext(c):
			i++
			atomLen++
			continue
		case c == '.':
			if atomLen == 0 {
				return "", p.k.syntaxErr("a dot at the start of the local part or two dots in a row (quote the local part if the mailbox really is so)")
			}
			atomLen = 0
			i++
			continue
		case c >= 0x80:
			n, rerr := p.letter(i, "local part")
			if rerr != nil {
				return "", rerr
			}
			i += n
			atomLen++
			continue
		}
		break
	}
	local := p.s[:i]
	if local == "" {
		return "", p.k.syntaxErr("empty local part, or a character that needs quoting: %q", cut(p.s))
	}
	if atomLen == 0 {
		return "", p.k.syntaxErr("a dot at the end of the local part")
	}
	p.s = p.s[i:]
	return local, nil
}

// refusedInQuotes are the characters a Quoted-string may hold by RFC 5321
// that this relay does not forward: a downstream parser that unquotes or
// splits naively could read them as the end of the path ('>'), another
// address ('<', '@', ',', ';', ':'), a comment ('(', ')') or a literal.
const refusedInQuotes = `<>@,;:()[]`

// quoted reads a Quoted-string and applies the policy in the package
// comment. It returns the canonical local part.
func (p *parser) quoted() (string, *Error) {
	var b strings.Builder
	escaped := false
	i := 1
	for ; i < len(p.s); i++ {
		c := p.s[i]
		if c == '"' {
			break
		}
		if c == '\\' {
			// quoted-pairSMTP = %d92 %d32-126
			if i+1 >= len(p.s) || p.s[i+1] < 32 || p.s[i+1] > 126 {
				return "", p.k.syntaxErr("malformed escape in the quoted local part")
			}
			escaped = true
			i++
			b.WriteByte(p.s[i])
			continue
		}
		if c < 32 || c == 127 {
			return "", p.k.syntaxErr("a control character in the quoted local part")
		}
		b.WriteByte(c) // non-ASCII is refused below
	}
	if i >= len(p.s) {
		return "", p.k.syntaxErr("the quoted local part has no closing quote")
	}
	p.s = p.s[i+1:]
	content := b.String()
	switch {
	case escaped:
		return "", p.k.refused(`a quoted local part with a backslash escape is not forwarded; send the mailbox without escapes`)
	case content == "":
		return "", p.k.refused("empty quoted local part")
	case !isASCII(content):
		return "", p.k.refused("non-ASCII in a quoted local part is not forwarded")
	case strings.ContainsAny(content, refusedInQuotes):
		return "", p.k.refused("a quoted local part containing any of %s is not forwarded", refusedInQuotes)
	case content[0] == ' ' || content[len(content)-1] == ' ':
		return "", p.k.refused("a quoted local part starting or ending with a space is not forwarded")
	}
	if isDotString(content) {
		// The same mailbox as the quoted form (RFC 5322 §3.2.4).
		return content, nil
	}
	return `"` + content + `"`, nil
}

// isDotString reports whether s (ASCII) is a valid Dot-string.
func isDotString(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] != '.' && !isAtext(s[i]) {
			return false
		}
	}
	return true
}

// domainName reads sub-domain *("." sub-domain); sub-domain = Let-dig
// [Ldh-str], or a U-label (letters, marks, digits, '-') with SMTPUTF8.
func (p *parser) domainName() (string, *Error) {
	i, label, last := 0, 0, byte(0)
	for i < len(p.s) {
		c := p.s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
			i, label, last = i+1, label+1, c
			continue
		case c == '-':
			if label == 0 {
				return "", p.k.syntaxErr("a domain label starts with '-'")
			}
			i, label, last = i+1, label+1, c
			continue
		case c == '.':
			if label == 0 {
				return "", p.k.syntaxErr("an empty label in the domain")
			}
			if last == '-' {
				return "", p.k.syntaxErr("a domain label ends with '-'")
			}
			i, label, last = i+1, 0, c
			continue
		case c >= 0x80:
			n, rerr := p.letter(i, "domain")
			if rerr != nil {
				return "", rerr
			}
			i, label, last = i+n, label+n, 'a'
			continue
		}
		break
	}
	d := p.s[:i]
	switch {
	case d == "":
		return "", p.k.syntaxErr("no domain after '@'")
	case label == 0:
		return "", p.k.syntaxErr("the domain ends with a dot")
	case last == '-':
		return "", p.k.syntaxErr("a domain label ends with '-'")
	case len(d) > 255:
		return "", p.k.syntaxErr("the domain is longer than 255 octets")
	}
	for _, l := range strings.Split(d, ".") {
		if len(l) > 63 {
			return "", p.k.syntaxErr("a domain label is longer than 63 octets")
		}
	}
	p.s = p.s[i:]
	return d, nil
}

// literal reads an address literal: IPv4 or "IPv6:" IPv6. A General
// address literal (tag ":" content) is refused: it names no host Exchange
// can reach, and its content may hold '@'.
func (p *parser) literal() (string, *Error) {
	end := strings.IndexByte(p.s, ']')
	if end < 0 {
		return "", p.k.syntaxErr("the address literal has no closing ']'")
	}
	lit, content := p.s[:end+1], p.s[1:end]
	if tag, addr, ok := strings.Cut(content, ":"); ok {
		if !strings.EqualFold(tag, "IPv6") {
			return "", p.k.refused("only IPv4 and IPv6 address literals are accepted")
		}
		ip, err := netip.ParseAddr(addr)
		if err != nil || !ip.Is6() || ip.Zone() != "" || strings.ContainsAny(addr, "%") {
			return "", p.k.syntaxErr("%q is not an IPv6 address", lit)
		}
	} else if !isIPv4Literal(content) {
		return "", p.k.syntaxErr("%q is not an IPv4 address", lit)
	}
	p.s = p.s[end+1:]
	return lit, nil
}

// isIPv4Literal is RFC 5321's IPv4-address-literal: Snum 3("." Snum),
// Snum = 1*3DIGIT of value 0-255.
func isIPv4Literal(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 4 {
		return false
	}
	for _, n := range parts {
		if len(n) < 1 || len(n) > 3 || strings.Trim(n, "0123456789") != "" {
			return false
		}
		if v, _ := strconv.Atoi(n); v > 255 {
			return false
		}
	}
	return true
}

type param struct {
	key      string // upper case
	value    string
	hasValue bool
}

// parseParams reads SP esmtp-param *(SP esmtp-param) (RFC 5321 §4.1.2),
// tolerating runs of spaces and trailing spaces.
func parseParams(s string) ([]param, *Error) {
	var out []param
	seen := map[string]bool{}
	for _, f := range strings.Split(s, " ") {
		if f == "" {
			continue
		}
		key, value, hasValue := strings.Cut(f, "=")
		if !isKeyword(key) || (hasValue && !isValue(value)) {
			return nil, newError(501, [3]int{5, 5, 4}, fmt.Sprintf("Malformed parameter %q (RFC 5321 section 4.1.2)", cut(f)))
		}
		key = strings.ToUpper(key)
		if seen[key] {
			return nil, newError(501, [3]int{5, 5, 4}, fmt.Sprintf("Parameter %s given twice", key))
		}
		seen[key] = true
		out = append(out, param{key: key, value: value, hasValue: hasValue})
	}
	return out, nil
}

// isKeyword: esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-").
func isKeyword(s string) bool {
	if s == "" || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// isValue: esmtp-value = 1*(%d33-60 / %d62-126).
func isValue(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 33 || c > 126 || c == '=' {
			return false
		}
	}
	return true
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
