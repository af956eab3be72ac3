// Package secret owns the Secret type: a string that refuses to be printed.
//
// Tokens, client assertions, client secrets, certificate passwords and
// XOAUTH2 payloads are held as Secret so that an accidental %v, %s, %q, %#v,
// zap.Any or json.Marshal of a struct that contains one prints a placeholder
// instead of the value (docs/design.md#secrets-never-leave-their-box). The only
// way to get the value is Reveal, which makes each use greppable.
package secret

import "log/slog"

// Redacted is what every formatting path prints instead of the value.
const Redacted = "[REDACTED]"

// Secret is a string that never formats as itself.
type Secret string

// Reveal returns the secret value. Call it only at the point where the value
// leaves the process on purpose (an HTTP form, a SASL response).
func (s Secret) Reveal() string { return string(s) }

// IsZero reports whether no secret is set.
func (s Secret) IsZero() bool { return s == "" }

// String implements fmt.Stringer.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return Redacted
}

// GoString implements fmt.GoStringer so %#v is redacted too.
func (s Secret) GoString() string { return `secret.Secret("` + s.String() + `")` }

// MarshalText implements encoding.TextMarshaler (used by JSON, YAML and zap's
// reflection encoder).
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// LogValue implements slog.LogValuer.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }
