package address

import (
	"fmt"
	"strconv"
	"strings"
)

// ESMTP parameters after the path (RFC 5321 §4.1.2 esmtp-param): their
// syntax here, and which of them MAIL accepts. None is passed on; the relay
// writes the MAIL parameters it chooses itself.

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

// setParams checks MAIL's parameters and records the ones the relay uses.
func (m *Mail) setParams(params []param) *Error {
	for _, pr := range params {
		switch pr.key {
		case "SIZE":
			n, err := strconv.ParseInt(pr.value, 10, 64)
			if !pr.hasValue || err != nil || n < 0 || strings.TrimLeft(pr.value, "0123456789") != "" {
				return newError(501, [3]int{5, 5, 4}, "SIZE= needs a number of octets (RFC 1870)")
			}
			m.Size = n
		case "BODY":
			switch strings.ToUpper(pr.value) {
			case "7BIT", "8BITMIME":
				m.Body = strings.ToUpper(pr.value)
			default:
				return newError(501, [3]int{5, 5, 4}, "BODY= must be 7BIT or 8BITMIME (RFC 6152)")
			}
		case "SMTPUTF8":
			if pr.hasValue {
				return newError(501, [3]int{5, 5, 4}, "SMTPUTF8 takes no value (RFC 6531)")
			}
			m.SMTPUTF8 = true
		case "AUTH":
			// RFC 4954 §5: the submitter's identity, asserted by a
			// client this relay does not trust to assert it. Dropped;
			// never passed on.
			if !pr.hasValue {
				return newError(501, [3]int{5, 5, 4}, "AUTH= needs a value (RFC 4954 section 5)")
			}
		default:
			return newError(555, [3]int{5, 5, 4}, fmt.Sprintf("MAIL parameter %s is not supported here", pr.key))
		}
	}
	return nil
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
