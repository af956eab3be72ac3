package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/mail"
	"os"
	"strings"
	"time"
)

// header is the message's header block as read from stdin, field by
// field with its original bytes, so that what goes to the relay is what
// the caller wrote apart from the fields sendmail adds or removes.
type header struct {
	fields [][]byte // each field with its continuation lines and line ends
	rest   []byte   // the first body line, when the header block ended without an empty line
	done   bool     // the input ended (EOF, or a lone "." without -i) in the header
}

// readHeader reads up to and including the empty line that ends the
// header block. A leading mbox "From " line is dropped, as sendmail does.
func readHeader(in *bufio.Reader, ignoreDots bool) (*header, error) {
	h := &header{}
	size := 0
	first := true
	for {
		line, err := in.ReadBytes('\n')
		size += len(line)
		if size > maxSendmailHeader {
			return nil, failf(exDataErr, "the header is larger than %d bytes; is this a message?", maxSendmailHeader)
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, failf(exNoInput, "reading the message: %v", err)
		}
		if len(line) == 0 {
			h.done = true
			return h, nil
		}
		trimmed := bytes.TrimRight(line, "\r\n")
		switch {
		case !ignoreDots && string(trimmed) == ".":
			h.done = true
			return h, nil
		case first && bytes.HasPrefix(line, []byte("From ")):
		case len(trimmed) == 0:
			return h, nil
		case (line[0] == ' ' || line[0] == '\t') && len(h.fields) > 0:
			h.fields[len(h.fields)-1] = append(h.fields[len(h.fields)-1], line...)
		case isFieldLine(trimmed):
			h.fields = append(h.fields, line)
		default:
			// Not a header field: the message has no (more) header; this
			// is the first body line.
			h.rest = line
			return h, nil
		}
		first = false
		if errors.Is(err, io.EOF) {
			h.done = true
			return h, nil
		}
	}
}

// isFieldLine reports whether line starts a header field: a name of
// printable ASCII without spaces, then a colon (RFC 5322 §2.2).
func isFieldLine(line []byte) bool {
	i := bytes.IndexByte(line, ':')
	if i <= 0 {
		return false
	}
	for _, c := range line[:i] {
		if c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

func fieldName(f []byte) string {
	i := bytes.IndexByte(f, ':')
	return string(f[:i])
}

// values returns the unfolded values of the fields named name.
func (h *header) values(name string) []string {
	var out []string
	for _, f := range h.fields {
		if strings.EqualFold(fieldName(f), name) {
			v := string(f[bytes.IndexByte(f, ':')+1:])
			v = strings.NewReplacer("\r\n", "", "\n", "").Replace(v)
			out = append(out, strings.TrimSpace(v))
		}
	}
	return out
}

func (h *header) has(name string) bool { return len(h.values(name)) > 0 }

// addresses returns the addresses in the fields named name. A value
// net/mail cannot read (a local name like "root (Cron Daemon)", a
// missing domain) is split by hand, so that cron's and scripts' headers
// still yield their recipients.
func (h *header) addresses(name string) []string {
	var out []string
	for _, v := range h.values(name) {
		out = append(out, splitAddresses(v)...)
	}
	return out
}

func splitAddresses(v string) []string {
	if list, err := mail.ParseAddressList(v); err == nil {
		var out []string
		for _, a := range list {
			out = append(out, a.Address)
		}
		return out
	}
	var out []string
	for _, part := range strings.Split(v, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if a, err := mail.ParseAddress(part); err == nil {
			out = append(out, a.Address)
			continue
		}
		if i, j := strings.IndexByte(part, '<'), strings.LastIndexByte(part, '>'); i >= 0 && j > i {
			part = part[i+1 : j]
		} else if i := strings.IndexByte(part, '('); i > 0 {
			part = part[:i] // "root (Cron Daemon)"
		}
		if part = strings.TrimSpace(part); part != "" && !strings.ContainsAny(part, " \t\"") {
			out = append(out, part)
		}
	}
	return out
}

// complete removes Bcc: (its recipients must not see each other) and adds
// the From:, Date: and Message-ID: fields a message needs (RFC 5322 §3.6)
// when the caller left them out, as sendmail and Postfix do.
func (h *header) complete(sender, fullName, host string) {
	kept := h.fields[:0]
	for _, f := range h.fields {
		if !strings.EqualFold(fieldName(f), "Bcc") {
			kept = append(kept, f)
		}
	}
	h.fields = kept
	eol := "\n"
	if len(h.fields) > 0 && bytes.HasSuffix(h.fields[0], []byte("\r\n")) {
		eol = "\r\n"
	}
	if !h.has("From") {
		a := mail.Address{Name: fullName, Address: sender}
		h.fields = append(h.fields, []byte("From: "+a.String()+eol))
	}
	if !h.has("Date") {
		h.fields = append(h.fields, []byte("Date: "+time.Now().Format(time.RFC1123Z)+eol))
	}
	if !h.has("Message-ID") {
		h.fields = append(h.fields, []byte("Message-ID: "+newMessageID(host)+eol))
	}
}

// bytes is the header block, the empty line, and the first body line if
// the header block ended without one.
func (h *header) bytes() []byte {
	var b bytes.Buffer
	for _, f := range h.fields {
		b.Write(f)
		if !bytes.HasSuffix(f, []byte("\n")) {
			b.WriteString("\n")
		}
	}
	b.WriteString("\n")
	b.Write(h.rest)
	return b.Bytes()
}

// bodyReader passes the body through; without -i a line holding a single
// dot ends it (sendmail's default, from the days of typing mail by hand).
type bodyReader struct {
	r          *bufio.Reader
	ignoreDots bool
	done       bool
	pending    []byte
	midLine    bool
}

func (b *bodyReader) Read(p []byte) (int, error) {
	for len(b.pending) == 0 {
		if b.done {
			return 0, io.EOF
		}
		line, err := b.r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			b.pending = append(b.pending[:0], line...)
			b.midLine = true
			break
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return 0, failf(exNoInput, "reading the message: %v", err)
		}
		if errors.Is(err, io.EOF) {
			b.done = true
		}
		if !b.midLine && !b.ignoreDots && string(bytes.TrimRight(line, "\r\n")) == "." {
			b.done = true
			return 0, io.EOF
		}
		b.midLine = false
		b.pending = append(b.pending[:0], line...)
	}
	n := copy(p, b.pending)
	b.pending = b.pending[n:]
	return n, nil
}

// resolveRecipients splits comma-separated arguments, turns local names
// (root, www-data: no @) into addresses through the aliases file, and
// drops duplicates. A local name without an alias is an error that says
// how to add one: Exchange cannot deliver to root.
func resolveRecipients(in []string, aliasFile string) ([]string, error) {
	var aliases map[string][]string
	var out []string
	seen := map[string]bool{}
	var add func(r string, depth int) error
	add = func(r string, depth int) error {
		if strings.Contains(r, "@") {
			if k := strings.ToLower(r); !seen[k] {
				seen[k] = true
				out = append(out, r)
			}
			return nil
		}
		if depth > 10 {
			return failf(exConfig, "%s: aliases nest more than 10 deep (a loop?)", aliasFile)
		}
		if aliases == nil {
			var err error
			if aliases, err = readAliases(aliasFile); err != nil {
				return err
			}
		}
		targets, ok := aliases[strings.ToLower(r)]
		if !ok {
			targets, ok = aliases["default"]
		}
		if !ok {
			return failf(exNoUser, "%s is a local name and %s has no entry for it; add a line '%s: you@example.com' (or 'default: you@example.com' for every local name)", r, aliasFile, r)
		}
		for _, t := range targets {
			if err := add(t, depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	for _, arg := range in {
		for _, r := range splitAddresses(arg) {
			if err := add(r, 0); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// readAliases reads an aliases(5) file: "name: address, address" with
// '#' comments and continuation lines that start with white space. Only
// addresses and other names are supported; a program (|cmd), a file or
// :include: cannot be reached through Exchange and is an error.
func readAliases(path string) (map[string][]string, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return map[string][]string{}, nil
	}
	if err != nil {
		return nil, failf(exConfig, "aliases: %v", err)
	}
	m := map[string][]string{}
	var entries []string
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimRight(line, "\r")
		if strings.HasPrefix(strings.TrimSpace(line), "#") || strings.TrimSpace(line) == "" {
			continue
		}
		if (line[0] == ' ' || line[0] == '\t') && len(entries) > 0 {
			entries[len(entries)-1] += " " + strings.TrimSpace(line)
			continue
		}
		entries = append(entries, line)
	}
	for _, e := range entries {
		name, targets, ok := strings.Cut(e, ":")
		if !ok {
			return nil, failf(exConfig, "%s: %q is not 'name: address, …'", path, e)
		}
		var list []string
		for _, t := range strings.Split(targets, ",") {
			t = strings.Trim(strings.TrimSpace(t), `"`)
			if t == "" {
				continue
			}
			if strings.HasPrefix(t, "|") || strings.HasPrefix(t, "/") || strings.HasPrefix(t, ":include:") {
				return nil, failf(exConfig, "%s: %s: %s is a program or file; through Exchange only addresses can receive mail", path, strings.TrimSpace(name), t)
			}
			list = append(list, t)
		}
		m[strings.ToLower(strings.TrimSpace(name))] = list
	}
	return m, nil
}
