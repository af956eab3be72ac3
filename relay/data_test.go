package relay

import (
	"bytes"
	"strings"
	"testing"
)

// The DATA differential: random bytes as a message's DATA through the
// whole relay (listener, spool, delivery, upstream) to the fake Exchange.
// A reference reading of RFC 5321 written here, independently of the
// relay's framer and body checker, says what the content is and which
// rules it breaks; the relay must refuse exactly the messages that break
// one (with a reply for one of the rules broken), and for every other one
// Exchange must receive the client's content after dot-unstuffing — after
// the documented line-ending normalisation, with line_endings: normalize —
// behind the relay's Received: field, byte for byte.

// maxTestMessage is the pipelines' max_message_bytes, small enough for
// fuzzed input to reach it.
const maxTestMessage = 8192

// refData is the reference reading of one DATA stream.
type refData struct {
	stream  []byte   // what the client sends after 354, ending with the end of data
	content []byte   // after dot-unstuffing (RFC 5321 §4.5.2)
	reasons []string // reply prefixes of the rules the content breaks
}

// frameRef cuts the client's stream at its first end of data: a line (CRLF
// ended) that is exactly "." — or a "." line at the very start — and
// unstuffs the lines before it. The input gets "\r\n.\r\n" appended, so
// every input has an end.
func frameRef(in []byte) (stream, content []byte) {
	s := append(append([]byte(nil), in...), "\r\n.\r\n"...)
	pos := 0
	for {
		i := bytes.Index(s[pos:], []byte("\r\n"))
		line := s[pos : pos+i] // without its CRLF
		if string(line) == "." {
			return s[:pos+i+2], content
		}
		if len(line) > 0 && line[0] == '.' {
			line = line[1:]
		}
		content = append(content, line...)
		content = append(content, '\r', '\n')
		pos += i + 2
	}
}

// normalizeRef is line_endings: normalize's documented change: every CR
// not followed by LF and every LF not preceded by CR becomes CRLF.
func normalizeRef(b []byte) []byte {
	var out []byte
	for i := 0; i < len(b); i++ {
		switch {
		case b[i] == '\r' && i+1 < len(b) && b[i+1] == '\n':
			out = append(out, '\r', '\n')
			i++
		case b[i] == '\r' || b[i] == '\n':
			out = append(out, '\r', '\n')
		default:
			out = append(out, b[i])
		}
	}
	return out
}

// judge reads a stream the way the relay's rules are documented.
func judge(in []byte, normalize bool) refData {
	r := refData{}
	r.stream, r.content = frameRef(in)
	var reasons []string
	if bytes.IndexByte(r.content, 0) >= 0 {
		reasons = append(reasons, "550 5.6.0 Message contains a NUL")
	}
	canon := normalizeRef(r.content)
	if !normalize && !bytes.Equal(canon, r.content) {
		reasons = append(reasons, "550 5.6.0 Message has a bare CR", "550 5.6.0 Message has a line ending in bare LF")
	}
	for _, l := range bytes.Split(r.stream, []byte("\n")) {
		if len(l) > 2000 {
			reasons = append(reasons, "500 5.5.2 Line too long")
			break
		}
	}
	if len(r.content) > maxTestMessage {
		reasons = append(reasons, "552 5.3.4 ")
	}
	hops := 0
	for _, l := range strings.Split(string(canon), "\r\n") {
		if l == "" {
			break
		}
		if len(l) >= 9 && strings.EqualFold(l[:9], "received:") {
			hops++
		}
	}
	if hops > 50 {
		reasons = append(reasons, "554 5.4.6 ")
	}
	if normalize {
		r.content = canon
	}
	r.reasons = reasons
	return r
}

// runData sends one message whose DATA is in and checks the relay against
// the reference.
func (p *pipeline) runData(tb testing.TB, in []byte, normalize bool) {
	tb.Helper()
	ref := judge(in, normalize)
	sc := p.dial(tb)
	defer sc.close()
	sc.mustCmd(tb, "EHLO client.example\r\n")
	if rep := sc.mustCmd(tb, "MAIL FROM:<app@trusted.example>\r\n"); !strings.HasPrefix(rep, "250 ") {
		tb.Fatalf("MAIL: %q", rep)
	}
	if rep := sc.mustCmd(tb, "RCPT TO:<x@fabrikam.example>\r\n"); !strings.HasPrefix(rep, "250 ") {
		tb.Fatalf("RCPT: %q", rep)
	}
	if rep := sc.mustCmd(tb, "DATA\r\n"); !strings.HasPrefix(rep, "354 ") {
		tb.Fatalf("DATA: %q", rep)
	}
	before := len(p.cloud.Exchange.Messages())
	rep, err := sc.cmd(string(ref.stream))
	if err != nil {
		tb.Fatalf("no reply to the end of data of %q: %v", ref.stream, err)
	}
	if len(ref.reasons) > 0 {
		for _, want := range ref.reasons {
			if strings.HasPrefix(rep, want) {
				return
			}
		}
		tb.Fatalf("DATA %q: reply %q, want one of %q", ref.stream, rep, ref.reasons)
	}
	if !strings.HasPrefix(rep, "250 ") || !strings.Contains(rep, "delivered") {
		tb.Fatalf("DATA %q: reply %q, want 250 delivered; the relay logged:%s", ref.stream, rep, p.problems())
	}
	msgs := p.cloud.Exchange.Messages()
	if len(msgs) != before+1 {
		tb.Fatalf("Exchange has %d messages, want %d", len(msgs), before+1)
	}
	got := msgs[len(msgs)-1].Data
	// The relay's Received: field is three lines (smtpd.receivedHeader).
	rest, ok := got, bytes.HasPrefix(got, []byte("Received: from "))
	for i := 0; i < 3 && ok; i++ {
		j := bytes.Index(rest, []byte("\r\n"))
		ok = j >= 0
		rest = rest[j+2:]
	}
	if !ok || !bytes.Equal(rest, ref.content) {
		tb.Fatalf("DATA %q: Exchange got %q, want our Received: and %q", ref.stream, got, ref.content)
	}
	if v := p.cloud.Exchange.Violations(); len(v) > 0 {
		tb.Fatalf("DATA %q: violations at Exchange: %q", ref.stream, v)
	}
}

func startDataPipelines(tb testing.TB) map[bool]*pipeline {
	mk := func(le string) *pipeline {
		return startPipeline(tb, pipelineOptions{settings: map[string]string{
			"line_endings": le, "max_message_bytes": "8192",
		}})
	}
	return map[bool]*pipeline{false: mk("reject"), true: mk("normalize")}
}

// dataSeeds are the sequences the outside review found and their
// neighbours: a dot before a bare CR, CR CR LF after a dot line, NUL,
// smuggling line endings, dot-stuffing, long lines, size, hops.
var dataSeeds = []string{
	"Subject: x\r\n\r\nbody",
	"Subject: x\r\n\r\n..dot\r\n.x\r\n",
	"Subject: x\r\n\r\n.\rX\r\n",
	"Subject: x\r\n\r\n.\r\r\nbody",
	"Subject: x\r\r\n\r\r\nbody\r\r\n..dot\r\r",
	"Subject: x\r\n\r\nbo\x00dy",
	"Subject: x\r\n\r\nbo\r\x00dy",
	"Subject: x\n\nsmuggled\n.\nMAIL FROM:<evil@example.net>\r\n",
	"Subject: x\r\n\r\n\n.\r\nQUIT\r\n",
	"Subject: x\r\n\r\n.\n.\r.\r\n",
	"\r\n",
	"",
	".",
	"..",
	"\r",
	"\n",
	"Subject: x\r\n\r\n" + strings.Repeat("y", 2100),
	"Subject: x\r\n\r\n" + strings.Repeat("0123456789abcdef\r\n", 600),
	strings.Repeat("Received: from x\r\n", 51) + "\r\nx",
	strings.Repeat("Received: from x\n", 51) + "\nx",
}

// TestDataReachesExchangeUnchanged runs the seeds and generated streams
// built from the pieces that matter to framing.
func TestDataReachesExchangeUnchanged(t *testing.T) {
	t.Parallel()
	ps := startDataPipelines(t)
	pieces := []string{"\r", "\n", "\r\n", ".", "..", "\x00", "a", "Received: x", " ", "\r\n.", ".\r", "\r\r\n"}
	inputs := append([]string(nil), dataSeeds...)
	// Every sequence of up to two pieces after a header (three pieces
	// take a minute: FuzzData goes further).
	var gen func(prefix string, depth int)
	gen = func(prefix string, depth int) {
		inputs = append(inputs, "Subject: g\r\n\r\n"+prefix)
		if depth == 2 {
			return
		}
		for _, p := range pieces {
			gen(prefix+p, depth+1)
		}
	}
	gen("", 0)
	for _, in := range inputs {
		for _, normalize := range []bool{false, true} {
			ps[normalize].runData(t, []byte(in), normalize)
		}
	}
	t.Logf("%d streams, each in both line_endings modes", len(inputs))
}

// FuzzData is the differential over fuzzed DATA content.
func FuzzData(f *testing.F) {
	for _, s := range dataSeeds {
		f.Add(false, []byte(s))
		f.Add(true, []byte(s))
	}
	ps := startDataPipelines(f)
	f.Fuzz(func(t *testing.T, normalize bool, in []byte) {
		ps[normalize].runData(t, in, normalize)
	})
}
