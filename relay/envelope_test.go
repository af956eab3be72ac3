package relay

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/o365relay/o365relay/relay/exchangetest"
	"github.com/o365relay/o365relay/relay/relaytest"
)

// otherMailbox is where the catch-all sender rule sends; relaytest.Mailbox
// is reserved for the two restricted rules, so a message Exchange accepts
// as relaytest.Mailbox must carry one of their senders.
const otherMailbox = "other@contoso.example"

const envelopeRules = `senders:
  - sender: billing@app.example
    mailbox: ` + relaytest.Mailbox + `
  - sender: "*@trusted.example"
    mailbox: ` + relaytest.Mailbox + `
  - sender: "*"
    mailbox: ` + otherMailbox + `
`

func startEnvelopePipeline(tb testing.TB) *pipeline {
	return startPipeline(tb, pipelineOptions{file: envelopeRules, exchange: func(o *exchangetest.Options) {
		o.Mailboxes[otherMailbox] = exchangetest.Mailbox{Apps: []string{relaytest.ClientID}, SendAsAny: true}
	}})
}

// restricted reports whether a sender, as Exchange parsed it, is one the
// rules route to relaytest.Mailbox.
func restricted(m string) bool {
	m = strings.ToLower(m)
	return m == "billing@app.example" || strings.HasSuffix(m, "@trusted.example") && strings.Count(m, "@") == 1
}

// envelopeCase is one client transaction: a MAIL line and a RCPT line,
// CRLF not included.
type envelopeCase struct{ mail, rcpt string }

// run sends c and checks the property: each line is refused at intake
// with a proper reply, or the message reaches Exchange with the mailbox
// the client's line names (as the fake's independent strict parser reads
// both), no parameter the relay did not choose, and — the sender-rule
// bypass — a sender the restricted rules allow whenever it went out as
// their mailbox. It reports whether the message was delivered.
func (p *pipeline) runEnvelope(tb testing.TB, c envelopeCase) bool {
	tb.Helper()
	if strings.ContainsAny(c.mail+c.rcpt, "\r\n") {
		return false
	}
	sc := p.dial(tb)
	defer sc.close()
	sc.mustCmd(tb, "EHLO client.example\r\n")
	before := len(p.cloud.Exchange.Messages())
	rep := sc.mustCmd(tb, c.mail+"\r\n")
	if !strings.HasPrefix(rep, "250 ") {
		checkRefusal(tb, c.mail, rep)
		return false
	}
	rep = sc.mustCmd(tb, c.rcpt+"\r\n")
	if !strings.HasPrefix(rep, "250 ") {
		checkRefusal(tb, c.rcpt, rep)
		return false
	}
	if rep := sc.mustCmd(tb, "DATA\r\n"); !strings.HasPrefix(rep, "354 ") {
		tb.Fatalf("DATA: %q", rep)
	}
	rep = sc.mustCmd(tb, "Subject: envelope\r\n\r\nbody\r\n.\r\n")
	if !strings.HasPrefix(rep, "250 ") || !strings.Contains(rep, "delivered") {
		tb.Fatalf("%q / %q: accepted at intake, then %q (violations %q)", c.mail, c.rcpt, rep, p.cloud.Exchange.Violations())
	}
	msgs := p.cloud.Exchange.Messages()
	if len(msgs) != before+1 {
		tb.Fatalf("Exchange has %d messages, want %d", len(msgs), before+1)
	}
	got := msgs[len(msgs)-1]
	if v := p.cloud.Exchange.Violations(); len(v) > 0 {
		tb.Fatalf("%q / %q: protocol violations at Exchange: %q", c.mail, c.rcpt, v)
	}
	_, from, mailParams := clientPath(tb, c.mail, false)
	utf8 := false
	for _, pr := range mailParams {
		utf8 = utf8 || strings.EqualFold(pr.Keyword, "SMTPUTF8")
	}
	_, to, _ := clientPath(tb, c.rcpt, utf8)
	if got.From.Mailbox() != from.Mailbox() || len(got.To) != 1 || got.To[0].Mailbox() != to.Mailbox() {
		tb.Fatalf("client %q / %q named %q → %q; Exchange got %q → %q", c.mail, c.rcpt, from.Mailbox(), to.Mailbox(), got.From.Mailbox(), got.RcptTo)
	}
	checkParams(tb, got, utf8)
	if strings.EqualFold(got.AuthUser, relaytest.Mailbox) && !restricted(got.From.Mailbox()) {
		tb.Fatalf("sender-rule bypass: %q went out as %s with sender %q", c.mail, got.AuthUser, got.From.Mailbox())
	}
	return true
}

// clientPath parses the client's line with the fake's strict grammar,
// after undoing the spacing the relay tolerates (spaces after the colon,
// runs of spaces between parameters).
func clientPath(tb testing.TB, line string, utf8 bool) (string, exchangetest.Path, []exchangetest.Param) {
	tb.Helper()
	verb, p, params, err := exchangetest.ParseCommand(line, utf8)
	if err == nil {
		return verb, p, params
	}
	kw := "FROM:"
	if strings.EqualFold(line[:4], "RCPT") {
		kw = "TO:"
	}
	rest := strings.TrimLeft(line[5:], " ")
	rest = strings.TrimLeft(rest[len(kw):], " ")
	i := strings.IndexByte(rest, '>') // a tolerated line has no quoted '>'
	if i < 0 {
		// No brackets: the path is the first word.
		i = strings.IndexByte(rest+" ", ' ')
		rest = "<" + rest[:i] + ">" + rest[i:]
		i++
	}
	norm := line[:4] + " " + kw + rest[:i+1] + strings.Join(append([]string{""}, strings.Fields(rest[i+1:])...), " ")
	verb, p, params, err = exchangetest.ParseCommand(norm, utf8)
	if err != nil {
		tb.Fatalf("the relay accepted %q, which is not RFC 5321 even as %q: %v", line, norm, err)
	}
	return verb, p, params
}

// checkRefusal: a refused address gets a permanent reply naming an
// address or parameter problem, or the sender rules' 550 5.7.1.
func checkRefusal(tb testing.TB, line, rep string) {
	tb.Helper()
	for _, ok := range []string{"501 5.1.", "553 5.1.", "553 5.6.7 ", "501 5.5.", "555 5.5.4 ", "504 5.5.4 ", "500 5.5.", "550 5.7.1 "} {
		if strings.HasPrefix(rep, ok) {
			return
		}
	}
	tb.Fatalf("%q refused with %q", line, rep)
}

// checkParams: only the MAIL parameters the relay chooses — SIZE (its own
// count), BODY=8BITMIME and SMTPUTF8 exactly when the client asked — and
// no RCPT parameter.
func checkParams(tb testing.TB, got exchangetest.Message, utf8 bool) {
	tb.Helper()
	seen := map[string]bool{}
	for _, pr := range got.MailParams {
		k := strings.ToUpper(pr.Keyword)
		switch {
		case seen[k]:
			tb.Fatalf("parameter %s twice: %v", k, got.MailParams)
		case k == "SIZE" && pr.HasValue && strings.Trim(pr.Value, "0123456789") == "":
		case k == "BODY" && pr.Value == "8BITMIME":
		case k == "SMTPUTF8" && !pr.HasValue && utf8:
		default:
			tb.Fatalf("Exchange got MAIL parameter %s the relay did not choose: %v", pr, got.MailParams)
		}
		seen[k] = true
	}
	if utf8 != seen["SMTPUTF8"] {
		tb.Fatalf("client SMTPUTF8 %v, Exchange got %v", utf8, got.MailParams)
	}
	for _, ps := range got.RcptParams {
		if len(ps) > 0 {
			tb.Fatalf("Exchange got RCPT parameters %v", ps)
		}
	}
}

// Pieces of generated addresses: what the issue lists (quotes, escapes,
// '>', spaces, '=', "@@", source routes, UTF-8, parameters) and the
// sender rules' own addresses hidden in each of them.
var (
	genLocals = []string{
		"app", "Billing", "billing", "first.last", "a=b", "a+tag", "a%b", "a!b",
		`"billing"`, `"Billing"`, `"first.last"`, `"john smith"`, `"a..b"`, `".a"`, `"x>"`, `"a@b"`,
		`"a\"b"`, `"a\\b"`, `"a\b"`, `"a b> SIZE=1"`, `"billing@app.example> AUTH=<x"`,
		`"billing@app.example>"`, `"billing@app.example"`, `"@trusted.example"`, `"x@trusted.example> x"`,
		`"victim@bank.example> AUTH=<x"`, `"victim@bank.example> ENVID=x"`,
		`"a,b"`, `"a;b"`, `"(x)"`, `"a=b"`, `""`, `" a"`, `"a "`, "a..b", ".a", "a.", "a b", "",
		"jörg", `"jörg"`, "j＠rg", "billing@app.example", "a@", `"a"b"`, "a>b", `"\x01"`,
	}
	genDomains = []string{
		"example.org", "Example.ORG", "app.example", "trusted.example", "TRUSTED.example", "[192.0.2.1]",
		"[IPv6:2001:db8::1]", "[tag:x@y]", "bücher.example", "ex ample.org", "example.org.", "-x.org",
		"trusted.example>", "trusted.example> SIZE=1", "app.example@trusted.example", "xn--bcher-kva.example",
		"trusted．example", "[300.1.1.1]", "",
	}
	genRoutes = []string{"", "@r1.example:", "@r1.example,@r2.example:", "@bad..x:", "@trusted.example:", "@:"}
	genParams = []string{"", " SIZE=100", " SMTPUTF8", " BODY=8BITMIME", " BODY=7BIT", " AUTH=<>", " RET=FULL",
		" X-FOO=1", "  SIZE=5", " SIZE=5 SIZE=6", " SMTPUTF8 BODY=8BITMIME", " AUTH=billing@app.example", " SIZE"}
)

func genPath(r *rand.Rand) (string, string) {
	local := genLocals[r.IntN(len(genLocals))]
	domain := genDomains[r.IntN(len(genDomains))]
	route := genRoutes[r.IntN(len(genRoutes))]
	params := genParams[r.IntN(len(genParams))]
	return "<" + route + local + "@" + domain + ">", params
}

// envelopeCases are the generated transactions: every piece once in an
// otherwise ordinary address, then random combinations.
func envelopeCases(n int) []envelopeCase {
	var out []envelopeCase
	mail := func(path, params string) {
		out = append(out, envelopeCase{"MAIL FROM:" + path + params, "RCPT TO:<x@fabrikam.example>"})
	}
	rcpt := func(path string, utf8 bool) {
		m := "MAIL FROM:<app@trusted.example>"
		if utf8 {
			m += " SMTPUTF8"
		}
		out = append(out, envelopeCase{m, "RCPT TO:" + path})
	}
	for _, l := range genLocals {
		mail("<"+l+"@app.example>", "")
		mail("<"+l+"@trusted.example>", " SMTPUTF8")
		rcpt("<"+l+"@fabrikam.example>", false)
		rcpt("<"+l+"@fabrikam.example>", true)
	}
	for _, d := range genDomains {
		mail("<billing@"+d+">", " SMTPUTF8")
		rcpt("<x@"+d+">", true)
	}
	for _, rt := range genRoutes {
		mail("<"+rt+"billing@app.example>", "")
		rcpt("<"+rt+"x@fabrikam.example>", false)
	}
	for _, p := range genParams {
		mail("<billing@app.example>", p)
		out = append(out, envelopeCase{"MAIL FROM:<billing@app.example>", "RCPT TO:<x@fabrikam.example>" + p})
	}
	out = append(out, envelopeCase{"MAIL FROM:<>", "RCPT TO:<x@fabrikam.example>"},
		envelopeCase{"MAIL FROM:billing@app.example", "RCPT TO:x@fabrikam.example"},
		envelopeCase{"mail from: <billing@app.example>  size=10 ", "rcpt to: <x@fabrikam.example> "})
	r := rand.New(rand.NewPCG(13, 5))
	for range n {
		from, fp := genPath(r)
		to, _ := genPath(r)
		out = append(out, envelopeCase{"MAIL FROM:" + from + fp, "RCPT TO:" + to})
	}
	return out
}

// TestEnvelopeReachesExchangeUnchanged is the property over generated
// addresses: refused at intake, or Exchange's strictly parsed envelope
// names the mailboxes the client's lines name, with no parameter the
// relay did not choose and no way around the sender rules.
func TestEnvelopeReachesExchangeUnchanged(t *testing.T) {
	t.Parallel()
	p := startEnvelopePipeline(t)
	n := 150
	if testing.Short() {
		n = 30
	}
	delivered, refused := 0, 0
	for _, c := range envelopeCases(n) {
		if p.runEnvelope(t, c) {
			delivered++
		} else {
			refused++
		}
	}
	t.Logf("%d transactions delivered, %d refused at intake", delivered, refused)
	if delivered < 50 || refused < 50 {
		t.Errorf("the generator lost its balance: %d delivered, %d refused", delivered, refused)
	}
}

// FuzzEnvelope sends fuzzed MAIL and RCPT text through the whole relay to
// the fake Exchange, with the same property as
// TestEnvelopeReachesExchangeUnchanged.
func FuzzEnvelope(f *testing.F) {
	for _, c := range envelopeCases(20) {
		f.Add(c.mail[len("MAIL FROM:"):], c.rcpt[len("RCPT TO:"):])
	}
	p := startEnvelopePipeline(f)
	f.Fuzz(func(t *testing.T, from, to string) {
		p.runEnvelope(t, envelopeCase{"MAIL FROM:" + from, "RCPT TO:" + to})
	})
}
