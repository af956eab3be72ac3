package exchangetest

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Path is a MAIL FROM or RCPT TO path as the fake parsed it from the
// command line the client sent, strictly by the grammar of RFC 5321
// §4.1.2 (with RFC 6531's UTF-8 when MAIL carried SMTPUTF8). It is written
// independently of the relay's own parser (regular expressions over the
// ABNF instead of a hand-written scanner), so tests can compare the two.
type Path struct {
	// Route lists the A-d-l domains of a source route, if any.
	Route []string
	// Local is the local part's value: a Dot-string as sent, or a
	// Quoted-string's content with its quoted-pairs resolved.
	Local string
	// Quoted says the local part was sent as a Quoted-string.
	Quoted bool
	// Domain is the domain or address literal as sent.
	Domain string
}

// Null reports the null reverse-path "<>".
func (p Path) Null() bool { return p.Local == "" && p.Domain == "" && !p.Quoted }

// Mailbox is Local "@" Domain, the local part as a value (unquoted): two
// paths name the same mailbox when their Mailbox strings are equal.
func (p Path) Mailbox() string {
	if p.Null() {
		return ""
	}
	return p.Local + "@" + p.Domain
}

// Param is one esmtp-param of a MAIL or RCPT command.
type Param struct {
	Keyword  string // as sent
	Value    string
	HasValue bool
}

func (p Param) String() string {
	if p.HasValue {
		return p.Keyword + "=" + p.Value
	}
	return p.Keyword
}

// The grammar, RFC 5321 §4.1.2 and §4.1.3, RFC 6531 §3.3.
const (
	reAtextASCII = `\-A-Za-z0-9!#$%&'*+/=?^_` + "`" + `{|}~`
	reLetDig     = `[A-Za-z0-9]`
	reSubDomain  = reLetDig + `(?:[A-Za-z0-9-]*` + reLetDig + `)?`
	reDomain     = reSubDomain + `(?:\.` + reSubDomain + `)*`
	reQcontent   = `(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])`
	reIPv4       = `[0-9]{1,3}(?:\.[0-9]{1,3}){3}`
	reLiteral    = `\[(?:` + reIPv4 + `|[Ii][Pp][Vv]6:[0-9A-Fa-f:.]+|[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+)\]`
	reParam      = `[A-Za-z0-9][A-Za-z0-9-]*(?:=[\x21-\x3c\x3e-\x7e]+)?`
)

// UTF-8 forms: atext, qtext and sub-domain labels may also hold non-ASCII.
const (
	reAtextUTF8     = `[` + reAtextASCII + `\x{80}-\x{10FFFF}]`
	reQcontentUTF8  = `(?:[\x20\x21\x23-\x5b\x5d-\x7e\x{80}-\x{10FFFF}]|\\[\x20-\x7e])`
	reSubDomainUTF8 = `[A-Za-z0-9\x{80}-\x{10FFFF}](?:[A-Za-z0-9\x{80}-\x{10FFFF}-]*[A-Za-z0-9\x{80}-\x{10FFFF}])?`
)

func pathRegexp(atext, qcontent, subDomain string) *regexp.Regexp {
	domain := subDomain + `(?:\.` + subDomain + `)*`
	dotString := atext + `+(?:\.` + atext + `+)*`
	return regexp.MustCompile(`^<` +
		`(?:(@` + reDomain + `(?:,@` + reDomain + `)*):)?` +
		`(` + dotString + `|"` + qcontent + `*")` +
		`@(` + domain + `|` + reLiteral + `)>`)
}

var (
	rePathASCII = pathRegexp(`[`+reAtextASCII+`]`, reQcontent, reSubDomain)
	rePathUTF8  = pathRegexp(reAtextUTF8, reQcontentUTF8, reSubDomainUTF8)
	reParams    = regexp.MustCompile(`^(?: ` + reParam + `)*$`)
)

// ParseCommand parses a whole MAIL or RCPT command line (CRLF removed)
// strictly: verb, one space, "FROM:" or "TO:", the path in angle
// brackets, each parameter after exactly one space. utf8 allows RFC 6531
// UTF-8 in the path (for MAIL it is allowed when the line itself carries
// SMTPUTF8).
func ParseCommand(line string, utf8OK bool) (verb string, p Path, params []Param, err error) {
	if len(line) < 5 || line[4] != ' ' {
		return "", Path{}, nil, fmt.Errorf("not a MAIL or RCPT command")
	}
	verb = strings.ToUpper(line[:4])
	rest := line[5:]
	var kw string
	switch verb {
	case "MAIL":
		kw = "FROM:"
	case "RCPT":
		kw = "TO:"
	default:
		return "", Path{}, nil, fmt.Errorf("not a MAIL or RCPT command")
	}
	if len(rest) < len(kw) || !strings.EqualFold(rest[:len(kw)], kw) {
		return "", Path{}, nil, fmt.Errorf("expected %s", kw)
	}
	rest = rest[len(kw):]
	if !utf8.ValidString(line) {
		return "", Path{}, nil, fmt.Errorf("not valid UTF-8")
	}
	mail := verb == "MAIL"
	if mail && strings.HasPrefix(rest, "<>") {
		rest = rest[2:]
	} else {
		// MAIL's own SMTPUTF8 parameter allows UTF-8 in its path:
		// parse allowing it, check the parameter below.
		var n int
		if p, n, err = parsePath(rest, utf8OK || mail); err != nil {
			return "", Path{}, nil, err
		}
		rest = rest[n:]
	}
	if !reParams.MatchString(rest) {
		return "", Path{}, nil, fmt.Errorf("malformed parameters %q", rest)
	}
	for _, f := range strings.Fields(rest) {
		k, v, ok := strings.Cut(f, "=")
		params = append(params, Param{Keyword: k, Value: v, HasValue: ok})
		if strings.EqualFold(k, "SMTPUTF8") && mail {
			utf8OK = true
		}
	}
	if !utf8OK && !isASCII(line) {
		return "", Path{}, nil, fmt.Errorf("non-ASCII without SMTPUTF8 (RFC 6531 section 3.4)")
	}
	return verb, p, params, nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// parsePath matches one path at the front of s and returns how many bytes
// it took.
func parsePath(s string, utf8OK bool) (Path, int, error) {
	re := rePathASCII
	if utf8OK {
		re = rePathUTF8
	}
	m := re.FindStringSubmatchIndex(s)
	if m == nil {
		return Path{}, 0, fmt.Errorf("path %q does not parse", s)
	}
	var p Path
	if m[2] >= 0 {
		for _, d := range strings.Split(s[m[2]:m[3]], ",") {
			p.Route = append(p.Route, strings.TrimPrefix(d, "@"))
		}
	}
	local := s[m[4]:m[5]]
	if strings.HasPrefix(local, `"`) {
		p.Quoted = true
		var b strings.Builder
		for i := 1; i < len(local)-1; i++ {
			if local[i] == '\\' {
				i++
			}
			b.WriteByte(local[i])
		}
		local = b.String()
	}
	p.Local = local
	p.Domain = s[m[6]:m[7]]
	if err := checkLiteral(p.Domain); err != nil {
		return Path{}, 0, err
	}
	if len(s[:m[1]]) > 256 {
		return Path{}, 0, fmt.Errorf("path longer than 256 octets (RFC 5321 section 4.5.3.1.3)")
	}
	for _, l := range strings.Split(p.Domain, ".") {
		if len(l) > 63 && !strings.HasPrefix(p.Domain, "[") {
			return Path{}, 0, fmt.Errorf("domain label longer than 63 octets")
		}
	}
	return p, m[1], nil
}

// checkLiteral checks what the regular expression cannot: IPv4 octets up
// to 255 and a real IPv6 address.
func checkLiteral(d string) error {
	if !strings.HasPrefix(d, "[") {
		return nil
	}
	in := d[1 : len(d)-1]
	if tag, addr, ok := strings.Cut(in, ":"); ok {
		if !strings.EqualFold(tag, "IPv6") {
			return nil // general address literal
		}
		ip, err := netip.ParseAddr(addr)
		if err != nil || !ip.Is6() || ip.Zone() != "" {
			return fmt.Errorf("%s: not an IPv6 address", d)
		}
		return nil
	}
	for _, n := range strings.Split(in, ".") {
		if v, err := strconv.Atoi(n); err != nil || v > 255 {
			return fmt.Errorf("%s: not an IPv4 address", d)
		}
	}
	return nil
}
