package address

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// The policy on top of the grammar (the package comment lists it): which
// well-formed local parts and characters the relay forwards, and the
// canonical form it forwards them in.

// refusedInQuotes are the characters a Quoted-string may hold by RFC 5321
// that this relay does not forward: a downstream parser that unquotes or
// splits naively could read them as the end of the path ('>'), another
// address ('<', '@', ',', ';', ':'), a comment ('(', ')') or a literal.
const refusedInQuotes = `<>@,;:()[]`

// quotedLocal applies the policy in the package comment to the content of
// a Quoted-string (quotes removed, escapes resolved; escaped says whether
// there were any) and returns the canonical local part.
func (k kind) quotedLocal(content string, escaped bool) (string, *Error) {
	switch {
	case escaped:
		return "", k.refused(`a quoted local part with a backslash escape is not forwarded; send the mailbox without escapes`)
	case content == "":
		return "", k.refused("empty quoted local part")
	case !isASCII(content):
		return "", k.refused("non-ASCII in a quoted local part is not forwarded")
	case strings.ContainsAny(content, refusedInQuotes):
		return "", k.refused("a quoted local part containing any of %s is not forwarded", refusedInQuotes)
	case content[0] == ' ' || content[len(content)-1] == ' ':
		return "", k.refused("a quoted local part starting or ending with a space is not forwarded")
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
