// Package rewrite owns the one change a sender rule may make to a message
// on its way to Exchange: the envelope sender, and with it the address in
// the From: header, replaced by the mailbox the relay sends as (config:
// senders[].rewrite; relay maps the config value to a Mode). The spool keeps
// the message as the application sent it; From is applied as the message
// streams out of the spool, holding only the header section.
package rewrite

import (
	"bufio"
	"bytes"
	"io"
	"strings"
)

// Mode says how a sender rule changes a message on its way to Exchange.
// Exchange refuses an envelope sender the mailbox may not send as (550
// 5.7.60 at MAIL, docs/exchange.md#550-5760-sender-not-permitted) and a
// From: header it may not send as (554 5.2.252 SendAsDenied after DATA,
// docs/exchange.md#554-52252-sendasdenied); an application with a
// hard-coded address that no mailbox can send as needs one or both
// rewritten to the mailbox.
type Mode int

const (
	// None sends the message as the application gave it.
	None Mode = iota
	// Envelope replaces the MAIL FROM address with the mailbox.
	Envelope
	// EnvelopeFrom also replaces the address in the From: header
	// (the function From).
	EnvelopeFrom
)

// String is the mode's name, the config spelling of the setting it comes
// from.
func (r Mode) String() string {
	switch r {
	case Envelope:
		return "envelope"
	case EnvelopeFrom:
		return "envelope+from"
	}
	return "none"
}

// MaxHeader bounds how much of a message From holds in memory to find
// the end of the header section: a header section (its ending
// empty line included) of at most this many octets is rewritten; a longer
// one is passed through unchanged. The intake refuses such a message from
// a sender whose rule rewrites From: (smtpd's errHeaderTooLong), so a
// message the relay acknowledged is never left unrewritten.
const MaxHeader = 256 << 10

// Slack is how many bytes From can add to a message whose From: field is
// at most maxFromField long, for the SIZE= estimate.
const Slack = 3*maxFromField + 256

// maxFromField: a From: field longer than this (folded lines included) is
// not copied into Reply-To / X-Original-From; it is replaced all the same.
const maxFromField = 2000

// From returns a reader that yields msg with the address in every
// From: header field replaced by mailbox, streaming: only the header section
// (up to MaxHeader) is held in memory, and everything after the empty
// line that ends it passes through byte for byte.
//
// What it writes, and why:
//   - The display name is kept ("Billing" <app@old> becomes
//     "Billing" <mailbox>), so recipients still see which application wrote.
//     A bare address (app@old) becomes <mailbox>.
//   - The original From: value goes into a Reply-To: field when the message
//     has none, so replies still reach the address the application meant;
//     it always goes into X-Original-From: as well, for whoever has to trace
//     a message back to the application.
//   - Nothing else changes: other fields keep their order and bytes (RFC
//     5322 §3.6 allows the new fields anywhere in the header; they are
//     inserted right after the From: field), and the body is untouched.
//
// The spool keeps the message as the application sent it; the rewrite is
// applied each time it is read for delivery.
func From(msg io.Reader, mailbox string) io.Reader {
	return &fromRewriter{src: msg, mailbox: mailbox}
}

type fromRewriter struct {
	src     io.Reader
	mailbox string
	out     io.Reader // set on first Read
	err     error
}

func (f *fromRewriter) Read(p []byte) (int, error) {
	if f.out == nil {
		if f.err = f.prepare(); f.err != nil {
			return 0, f.err
		}
	}
	return f.out.Read(p)
}

// prepare reads the header section and builds the output reader.
func (f *fromRewriter) prepare() error {
	br := bufio.NewReaderSize(f.src, 32<<10)
	var hdr []byte
	ended := false // saw the empty line (or EOF) that ends the header
	for len(hdr) <= MaxHeader {
		line, err := br.ReadSlice('\n')
		hdr = append(hdr, line...)
		if err == bufio.ErrBufferFull {
			continue // a very long line; keep reading it
		}
		if err == io.EOF {
			ended = true
			break
		}
		if err != nil {
			return err
		}
		if bytes.Equal(line, []byte("\r\n")) || bytes.Equal(line, []byte("\n")) {
			ended = true
			break
		}
	}
	if !ended || len(hdr) > MaxHeader {
		// Too long to be a real header section: leave it alone.
		f.out = io.MultiReader(bytes.NewReader(hdr), br)
		return nil
	}
	f.out = io.MultiReader(bytes.NewReader(rewriteHeader(hdr, f.mailbox)), br)
	return nil
}

// rewriteHeader applies From's rules to a complete header section
// (ending with its empty line, or at EOF).
func rewriteHeader(hdr []byte, mailbox string) []byte {
	fields := splitFields(hdr)
	hasReplyTo := false
	for _, fl := range fields {
		if fl.is("Reply-To") {
			hasReplyTo = true
		}
	}
	var out bytes.Buffer
	out.Grow(len(hdr) + Slack)
	for _, fl := range fields {
		if !fl.is("From") {
			out.Write(fl.raw)
			continue
		}
		value := fl.value() // without "From:" and the line end, folding kept
		eol := fl.eol()
		out.WriteString("From:")
		out.WriteString(replaceAddress(value, mailbox))
		out.WriteString(eol)
		if len(fl.raw) <= maxFromField {
			if !hasReplyTo {
				out.WriteString("Reply-To:" + value + eol)
				hasReplyTo = true
			}
			out.WriteString("X-Original-From:" + value + eol)
		}
	}
	return out.Bytes()
}

// field is one header field with its continuation lines, or a line that is
// not a field (the final empty line, garbage), kept as is.
type field struct {
	raw  []byte
	name string // "" if not a field
}

func (f field) is(name string) bool { return strings.EqualFold(f.name, name) }

func (f field) eol() string {
	if bytes.HasSuffix(f.raw, []byte("\r\n")) {
		return "\r\n"
	}
	if bytes.HasSuffix(f.raw, []byte("\n")) {
		return "\n"
	}
	return ""
}

func (f field) value() string {
	v := f.raw[len(f.name)+1:]
	v = bytes.TrimSuffix(v, []byte(f.eol()))
	return string(v)
}

// splitFields cuts a header section into fields (RFC 5322 §2.2: a field
// is a name, a colon and a body; §2.2.3: a line that starts with white
// space continues the previous field).
func splitFields(hdr []byte) []field {
	var out []field
	for len(hdr) > 0 {
		i := bytes.IndexByte(hdr, '\n')
		if i < 0 {
			i = len(hdr) - 1
		}
		line := hdr[:i+1]
		hdr = hdr[i+1:]
		if (line[0] == ' ' || line[0] == '\t') && len(out) > 0 && out[len(out)-1].name != "" {
			last := &out[len(out)-1]
			last.raw = append(last.raw, line...)
			continue
		}
		name := ""
		if c := bytes.IndexByte(line, ':'); c > 0 && validName(line[:c]) {
			name = string(line[:c])
		}
		out = append(out, field{raw: append([]byte(nil), line...), name: name})
	}
	return out
}

// validName: RFC 5322 §3.6.8 ftext, printable US-ASCII except colon.
func validName(b []byte) bool {
	for _, c := range b {
		if c < 33 || c > 126 {
			return false
		}
	}
	return true
}

// replaceAddress puts mailbox where the address is in a From: value,
// keeping the display name. It scans the value skipping quoted strings and
// comments (RFC 5322 §3.2.4, §3.2.2) so a "<" inside a display name is not
// taken for the angle address. A value with a single angle address keeps
// everything outside the brackets; anything else (a bare address, a list,
// a group) becomes " <mailbox>".
func replaceAddress(v, mailbox string) string {
	open, close, angles := -1, -1, 0
	depth, quoted, escaped := 0, false, false
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case escaped:
			escaped = false
		case c == '\\' && (quoted || depth > 0):
			escaped = true
		case quoted:
			if c == '"' {
				quoted = false
			}
		case depth > 0:
			if c == '(' {
				depth++
			} else if c == ')' {
				depth--
			}
		case c == '"':
			quoted = true
		case c == '(':
			depth++
		case c == '<':
			open = i
			angles++
		case c == '>':
			if open >= 0 && close < open {
				close = i
			}
		case c == ',' || c == ';':
			angles = 2 // a list or group: no single address to keep around
		}
	}
	if angles == 1 && open >= 0 && close > open {
		return v[:open+1] + mailbox + v[close:]
	}
	return " <" + mailbox + ">"
}
