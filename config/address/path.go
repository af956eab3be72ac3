package address

import (
	"net/netip"
	"strconv"
	"strings"
)

// The RFC 5321 §4.1.2 path grammar: Path, A-d-l, Mailbox, Local-part
// (Dot-string or Quoted-string), Domain and address-literal, read from the
// front of the argument of MAIL or RCPT.

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

// quoted reads a Quoted-string and returns the canonical local part;
// quotedLocal (policy.go) decides whether its content is forwarded.
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
		b.WriteByte(c) // non-ASCII is refused by quotedLocal
	}
	if i >= len(p.s) {
		return "", p.k.syntaxErr("the quoted local part has no closing quote")
	}
	p.s = p.s[i+1:]
	return p.k.quotedLocal(b.String(), escaped)
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
