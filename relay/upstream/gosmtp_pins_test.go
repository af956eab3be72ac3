package upstream

// Pins: the go-smtp client behaviours this package depends on, mirrors or
// works around, each asserted against go-smtp's own Client talking to a
// scripted server on a loopback port — not through Client/Deliver — so that
// a go-smtp upgrade that changes one fails here, by name. Where this
// package mirrors go-smtp (plainToTLS and its helpers, commandGroup,
// dotStuffer) the test runs both on the same input and compares. Run them
// with `go test ./relay/upstream -run Pin`; docs/exchange.md ("Upgrading
// go-smtp") says what each failure means.

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/o365relay/o365relay/config/tlstest"
	"github.com/o365relay/o365relay/relay/envelope"
)

// pinGreeting is what a script's respond gets first, for the greeting.
const pinGreeting = "\x00greeting"

// pinPeer is the server side of a scripted session: respond gets each
// line the client sent (without CRLF; pinGreeting first) and
// returns the reply to send ("" sends nothing). The lines are recorded.
type pinPeer struct {
	conn  net.Conn
	mu    sync.Mutex
	lines []string
	raw   bytes.Buffer // everything the client sent
	done  chan struct{}
}

// pinScript connects a client to a scripted server and returns the
// client's end. The script runs until the client closes.
func pinScript(t *testing.T, respond func(line string) string) (net.Conn, *pinPeer) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	p := &pinPeer{conn: server, done: make(chan struct{})}
	_ = server.SetDeadline(time.Now().Add(30 * time.Second))
	_ = client.SetDeadline(time.Now().Add(30 * time.Second))
	go func() {
		defer close(p.done)
		defer func() { _ = server.Close() }()
		r := bufio.NewReader(io.TeeReader(server, &p.raw))
		if g := respond(pinGreeting); g != "" {
			if _, err := io.WriteString(server, g); err != nil {
				return
			}
		}
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimSuffix(line, "\r\n")
			p.mu.Lock()
			p.lines = append(p.lines, line)
			p.mu.Unlock()
			if out := respond(line); out != "" {
				if _, err := io.WriteString(server, out); err != nil {
					return
				}
			}
		}
	}()
	t.Cleanup(func() {
		_ = client.Close()
		<-p.done
	})
	return client, p
}

// wait closes the client's end and waits for the script to see it: after
// that, lines and raw are complete.
func (p *pinPeer) wait(client net.Conn) ([]string, []byte) {
	_ = client.Close()
	<-p.done
	return p.lines, p.raw.Bytes()
}

// ehloOK is an EHLO reply with the given keywords.
func ehloOK(kw ...string) string {
	s := "250-pin.test Hello\r\n"
	for i, k := range kw {
		sep := "-"
		if i == len(kw)-1 {
			sep = " "
		}
		s += "250" + sep + k + "\r\n"
	}
	if len(kw) == 0 {
		s = "250 pin.test Hello\r\n"
	}
	return s
}

func sameSMTPError(a, b error) bool {
	var sa, sb *smtp.SMTPError
	if errors.As(a, &sa) != errors.As(b, &sb) {
		return false
	}
	if sa == nil {
		return (a == nil) == (b == nil)
	}
	return *sa == *sb
}

// plainToTLS does the greeting and EHLO itself, with go-smtp's steps and
// errors (readReply, ehloOffersSTARTTLS): a greeting other than 220 fails
// with its *smtp.SMTPError, EHLO refused with 500 or 502 falls back to
// HELO, any other refusal fails, and STARTTLS is an EHLO keyword. Both run
// against the same scripts here.
//
// If this fails: go-smtp's greeting or hello changed (a new fallback
// rule, a different error). Decide whether plainToTLS should follow; the
// stage a failure is reported at (connect or tls) depends on these steps.
func TestPinClientGreetingAndHelloMatchPlainToTLS(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		greeting string
		ehlo     string
	}{
		{"greeting refused", "554 5.7.1 go away\r\n", ""},
		{"EHLO 502", "220 pin.test\r\n", "502 5.5.1 no EHLO\r\n"},
		{"EHLO 500", "220 pin.test\r\n", "500 5.5.2 what\r\n"},
		{"EHLO 501", "220 pin.test\r\n", "501 5.5.4 bad name\r\n"},
		{"EHLO 421", "220 pin.test\r\n", "421 4.3.2 busy\r\n"},
		{"STARTTLS offered", "220 pin.test\r\n", ehloOK("SIZE 157286400", "STARTTLS", "8BITMIME")},
		{"STARTTLS with a parameter", "220 pin.test\r\n", ehloOK("STARTTLS NOW")},
		{"no STARTTLS", "220 pin.test\r\n", ehloOK("PIPELINING")},
	} {
		respond := func(line string) string {
			switch {
			case line == pinGreeting:
				return tc.greeting
			case strings.HasPrefix(line, "EHLO "):
				return tc.ehlo
			case strings.HasPrefix(line, "HELO "):
				return "250 pin.test\r\n"
			}
			return "500 5.5.1 unexpected\r\n"
		}
		conn, peer := pinScript(t, respond)
		c := smtp.NewClient(conn)
		theirErr := c.Hello("relay.test")
		theirTLS := false
		if theirErr == nil {
			theirTLS, _ = c.Extension("STARTTLS")
		}
		theirLines, _ := peer.wait(conn)

		conn, peer = pinScript(t, respond)
		r := replyReader(conn)
		_, ourErr := readReply(r, 220)
		ourTLS := false
		if ourErr == nil {
			ourTLS, ourErr = ehloOffersSTARTTLS(conn, r, "relay.test")
		}
		ourLines, _ := peer.wait(conn)

		if !sameSMTPError(theirErr, ourErr) || theirTLS != ourTLS || strings.Join(theirLines, "|") != strings.Join(ourLines, "|") {
			t.Errorf("%s: go-smtp sent %q, got err %v, STARTTLS %v; plainToTLS's steps sent %q, got err %v, STARTTLS %v",
				tc.name, theirLines, theirErr, theirTLS, ourLines, ourErr, ourTLS)
		}
	}
}

// lineLimitReader limits reply lines as go-smtp's client does (2,000
// octets counted with the line's end); compared here at the boundary, on a
// line that is not the first of the stream (go-smtp counts the first one
// an octet short, which no reply after the greeting sees).
//
// If this fails: go-smtp's client line limit changed. Change maxReplyLine
// (or lineLimitReader's counting) to match, so the relay neither refuses a
// reply go-smtp would take nor buffers a longer one.
func TestPinClientReplyLineLimitMatches(t *testing.T) {
	t.Parallel()
	accepted, refused := 0, 0
	for n := maxReplyLine - 4; n <= maxReplyLine+1; n++ {
		ehlo := "250-pin.test\r\n250 " + strings.Repeat("X", n-len("250 \r\n")) + "\r\n"
		respond := func(line string) string {
			if line == pinGreeting {
				return "220 pin.test\r\n"
			}
			return ehlo
		}
		conn, peer := pinScript(t, respond)
		theirErr := smtp.NewClient(conn).Hello("relay.test")
		peer.wait(conn)

		conn, peer = pinScript(t, respond)
		r := replyReader(conn)
		_, ourErr := readReply(r, 220)
		if ourErr == nil {
			_, ourErr = ehloOffersSTARTTLS(conn, r, "relay.test")
		}
		peer.wait(conn)
		if errors.Is(theirErr, smtp.ErrTooLongLine) != errors.Is(ourErr, smtp.ErrTooLongLine) {
			t.Errorf("a %d-octet reply line: go-smtp %v, lineLimitReader %v", n, theirErr, ourErr)
		}
		if theirErr == nil {
			accepted++
		} else if errors.Is(theirErr, smtp.ErrTooLongLine) {
			refused++
		}
	}
	if accepted == 0 || refused == 0 {
		t.Errorf("go-smtp's reply line limit is outside %d±4 octets (accepted %d, refused %d lengths)", maxReplyLine, accepted, refused)
	}
}

// A refusal reaches the relay as *smtp.SMTPError with the enhanced code
// (RFC 2034) parsed from the text and removed from every line that
// repeats it; FromSMTP keeps it as it is, and readReply/smtpError (the
// plaintext phase and pipelined transactions) do the same parse.
//
// If this fails: go-smtp parses replies differently. Make smtpError follow
// it, and check FromSMTP and the tests that match Exchange's texts
// (5.7.60 SendAsDenied, 5.5.127, 4.3.2) still see the codes they expect.
func TestPinClientSMTPErrorParsedFromText(t *testing.T) {
	t.Parallel()
	replies := []string{
		"550 5.7.60 SMTP; Client does not have permissions to send as this sender",
		"501 5.5.127 SMTP; token expired",
		"432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded",
		"550-5.7.1 first line\r\n550 5.7.1 second line",
		"550-5.1.1 first\r\n550 5.1.2 second",
		"554 no enhanced code here",
		"550 5.7 two parts",
		"550 5.x.1 not a number",
		"550 5.7.1",
		"451 +4.4.0 signed",
	}
	next := 0
	conn, peer := pinScript(t, func(line string) string {
		switch {
		case line == pinGreeting:
			return "220 pin.test\r\n"
		case strings.HasPrefix(line, "EHLO "):
			return ehloOK("8BITMIME")
		case strings.HasPrefix(line, "MAIL "):
			next++
			return replies[next-1] + "\r\n"
		}
		return ""
	})
	c := smtp.NewClient(conn)
	for _, rep := range replies {
		theirErr := c.Mail("a@b.test", nil)
		_, ourErr := readReply(replyReader(strings.NewReader(rep+"\r\n")), 250)
		var se *smtp.SMTPError
		if !errors.As(theirErr, &se) {
			t.Fatalf("%q: go-smtp's Mail returned %T %v, not *smtp.SMTPError", rep, theirErr, theirErr)
		}
		if !sameSMTPError(theirErr, ourErr) {
			t.Errorf("%q: go-smtp made %+v, smtpError %+v", rep, se, ourErr)
		}
	}
	peer.wait(conn)
}

// pinSASL is a scripted sasl.Client: Start's error, then one response per
// challenge.
type pinSASL struct {
	startErr error
	resps    [][]byte
}

func (s *pinSASL) Start() (string, []byte, error) {
	if s.startErr != nil {
		return "", nil, s.startErr
	}
	return Mechanism, nil, nil
}

func (s *pinSASL) Next([]byte) ([]byte, error) {
	if len(s.resps) == 0 {
		return nil, errors.New("pinSASL: no more responses")
	}
	r := s.resps[0]
	s.resps = s.resps[1:]
	return r, nil
}

// go-smtp's Auth: a nil response from the SASL client ends the exchange
// as a success without waiting for 235; an empty one is sent as an empty
// line; after any failure it sends "*" (and reads a reply); an error from
// Start comes back as it is, before anything is sent. NewXOAuth2 answers
// a further challenge with an empty response so that Exchange ends with
// 535, Client.auth matches ErrBadUser/errBadToken with errors.Is, and
// Client.connect closes the session after a failed AUTH (it is no longer
// in a known state).
//
// If this fails: go-smtp's AUTH exchange changed. If a nil response no
// longer means success, NewXOAuth2's empty response may be moot; if "*"
// is no longer sent, a session could survive a failed AUTH (still close
// it: the token is not valid on it); if Start's error is wrapped or sent,
// fix Client.auth's matching.
func TestPinClientAuthExchange(t *testing.T) {
	t.Parallel()
	auth := func(t *testing.T, sc *pinSASL, respond func(string) string) ([]string, error) {
		conn, peer := pinScript(t, func(line string) string {
			switch {
			case line == pinGreeting:
				return "220 pin.test\r\n"
			case strings.HasPrefix(line, "EHLO "):
				return ehloOK("AUTH XOAUTH2")
			}
			return respond(line)
		})
		err := smtp.NewClient(conn).Auth(sc)
		lines, _ := peer.wait(conn)
		return lines[1:], err // after EHLO
	}

	t.Run("nil response is success", func(t *testing.T) {
		t.Parallel()
		lines, err := auth(t, &pinSASL{resps: [][]byte{nil}}, func(string) string { return "334 \r\n" })
		if err != nil || len(lines) != 1 || lines[0] != "AUTH XOAUTH2" {
			t.Fatalf("a nil SASL response after 334: go-smtp returned %v after sending %q; want success with nothing sent", err, lines)
		}
	})

	t.Run("empty response, then failure and *", func(t *testing.T) {
		t.Parallel()
		challenge := base64.StdEncoding.EncodeToString([]byte(`{"status":"400"}`))
		lines, err := auth(t, &pinSASL{resps: [][]byte{[]byte("payload"), {}}}, func(line string) string {
			switch line {
			case "AUTH XOAUTH2":
				return "334 \r\n"
			case base64.StdEncoding.EncodeToString([]byte("payload")):
				return "334 " + challenge + "\r\n"
			case "":
				return "535 5.7.3 Authentication unsuccessful\r\n"
			case "*":
				return "501 5.0.0 cancelled\r\n"
			}
			return "500 5.5.1 unexpected\r\n"
		})
		want := []string{"AUTH XOAUTH2", base64.StdEncoding.EncodeToString([]byte("payload")), "", "*"}
		if strings.Join(lines, "|") != strings.Join(want, "|") {
			t.Fatalf("go-smtp's AUTH sent %q, want %q", lines, want)
		}
		var se *smtp.SMTPError
		if !errors.As(err, &se) || se.Code != 535 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 3}) {
			t.Fatalf("go-smtp's Auth returned %v, want the 535 5.7.3", err)
		}
	})

	t.Run("Start error", func(t *testing.T) {
		t.Parallel()
		lines, err := auth(t, &pinSASL{startErr: ErrBadUser}, func(string) string { return "500 5.5.1 unexpected\r\n" })
		if !errors.Is(err, ErrBadUser) || len(lines) != 0 {
			t.Fatalf("Start failing with ErrBadUser: go-smtp returned %v and sent %q", err, lines)
		}
	})
}

// After Reset (RSET), go-smtp's next command sends EHLO again first; the
// relay's session model (docs/exchange.md, "The session") assumes it and
// the fake Exchange expects it.
//
// If this fails: go-smtp no longer re-greets after RSET. Update the
// session description and the fake, and re-check that Extension still
// reports the extensions after a reset (transact asks it first).
func TestPinClientResetSendsEHLOAgain(t *testing.T) {
	t.Parallel()
	conn, peer := pinScript(t, func(line string) string {
		switch {
		case line == pinGreeting:
			return "220 pin.test\r\n"
		case strings.HasPrefix(line, "EHLO "):
			return ehloOK("PIPELINING", "8BITMIME")
		}
		return "250 2.0.0 OK\r\n"
	})
	c := smtp.NewClient(conn)
	if err := c.Hello("relay.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Reset(); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("PIPELINING"); !ok {
		t.Fatal("no PIPELINING after Reset")
	}
	if err := c.Mail("a@b.test", nil); err != nil {
		t.Fatal(err)
	}
	lines, _ := peer.wait(conn)
	want := []string{"EHLO relay.test", "RSET", "EHLO relay.test", "MAIL FROM:<a@b.test> BODY=8BITMIME"}
	if strings.Join(lines, "|") != strings.Join(want, "|") {
		t.Fatalf("go-smtp sent %q, want %q", lines, want)
	}
}

// go-smtp refuses an address with CR or LF with a plain error (not
// *smtp.SMTPError, so classify would take it for a network failure) and
// sends nothing; commandGroup refuses the same addresses with the same
// words, and Deliver checks addresses before it dials.
//
// If this fails: go-smtp's check changed. Keep the relay's own checks;
// align commandGroup's error with go-smtp's.
func TestPinClientRefusesCRLFWithPlainError(t *testing.T) {
	t.Parallel()
	conn, peer := pinScript(t, func(line string) string {
		switch {
		case line == pinGreeting:
			return "220 pin.test\r\n"
		case strings.HasPrefix(line, "EHLO "):
			return ehloOK("8BITMIME")
		}
		return "250 2.0.0 OK\r\n"
	})
	c := smtp.NewClient(conn)
	if err := c.Hello("relay.test"); err != nil {
		t.Fatal(err)
	}
	mailErr := c.Mail("a\r\nRCPT TO:<x@y.test>", nil)
	rcptErr := c.Rcpt("b\n@c.test", nil)
	_, ourErr := commandGroup(nil, &envelope.Envelope{From: "a\r\nb@c.test", To: []string{"d@e.test"}})
	lines, _ := peer.wait(conn)
	for _, err := range []error{mailErr, rcptErr} {
		var se *smtp.SMTPError
		if err == nil || errors.As(err, &se) {
			t.Fatalf("go-smtp's refusal of CR/LF in an address is %T %v, want a plain error", err, err)
		}
		if ourErr == nil || err.Error() != ourErr.Error() {
			t.Fatalf("go-smtp says %q, commandGroup %v", err, ourErr)
		}
	}
	if len(lines) != 1 {
		t.Fatalf("go-smtp sent %q for addresses with CR/LF", lines[1:])
	}
}

// DebugWriter is nil on a new go-smtp client, so never setting it keeps
// the AUTH line (the token) out of every log; set, it would record it.
//
// If this fails: go-smtp's default or its debug output changed. If new
// clients log by default, Client.startTLS must switch it off explicitly.
func TestPinClientDebugWriterOffByDefaultAndSeesAUTH(t *testing.T) {
	t.Parallel()
	respond := func(line string) string {
		switch {
		case line == pinGreeting:
			return "220 pin.test\r\n"
		case strings.HasPrefix(line, "EHLO "):
			return ehloOK("AUTH XOAUTH2")
		case line == "AUTH XOAUTH2":
			return "334 \r\n"
		}
		return "235 2.7.0 Authentication successful\r\n"
	}
	conn, peer := pinScript(t, respond)
	c := smtp.NewClient(conn)
	if c.DebugWriter != nil {
		t.Fatalf("a new go-smtp client logs to %T", c.DebugWriter)
	}
	peer.wait(conn)

	conn, peer = pinScript(t, respond)
	c = smtp.NewClient(conn)
	var debug bytes.Buffer
	c.DebugWriter = &debug
	if err := c.Auth(&pinSASL{resps: [][]byte{[]byte("bearer-secret"), nil}}); err != nil {
		t.Fatal(err)
	}
	peer.wait(conn)
	if !strings.Contains(debug.String(), base64.StdEncoding.EncodeToString([]byte("bearer-secret"))) {
		t.Fatalf("go-smtp's DebugWriter no longer records the AUTH response: %q", debug.String())
	}
}

// With PIPELINING the relay writes a transaction itself: commandGroup
// writes the lines go-smtp's Mail (MailOptions{UTF8, Size}), Rcpt (no
// options) and Data write, and dotStuffer stuffs the body as go-smtp's
// DATA writer does; the final reply's text is what CloseWithResponse
// gives, as readReply does.
//
// If this fails: go-smtp writes a transaction differently (a new MAIL
// parameter, another order, another stuffing). Pipelined and
// one-at-a-time transactions would differ on the wire: make commandGroup
// and dotStuffer write what go-smtp now writes.
func TestPinClientTransactionBytesMatchCommandGroup(t *testing.T) {
	t.Parallel()
	const final = "250 2.0.0 OK <pin@id> [Hostname=pin.test]"
	inData := false
	nc, peer := pinScript(t, func(line string) string {
		switch {
		case inData:
			if line == "." {
				inData = false
				return final + "\r\n"
			}
			return ""
		case line == pinGreeting:
			return "220 pin.test\r\n"
		case strings.HasPrefix(line, "EHLO "):
			return ehloOK("SIZE 157286400", "PIPELINING", "8BITMIME", "SMTPUTF8", "CHUNKING")
		case line == "DATA":
			inData = true
			return "354 Start mail input\r\n"
		}
		return "250 2.1.0 OK\r\n"
	})
	env := &envelope.Envelope{From: "a@b.test", To: []string{"c@d.test", "é@f.test"}, SMTPUTF8: true, Size: 1234}
	body := []byte(".leading dot\r\nbare LF\nmid\rCR\r\n..two dots\r\n.\r\nno end")
	c := smtp.NewClient(nc)
	if err := c.Hello("relay.test"); err != nil {
		t.Fatal(err)
	}
	group, err := commandGroup(&conn{smtp: c}, env)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Mail(env.From, &smtp.MailOptions{UTF8: env.SMTPUTF8, Size: env.Size}); err != nil {
		t.Fatal(err)
	}
	for _, r := range env.To {
		if err := c.Rcpt(r, nil); err != nil {
			t.Fatal(err)
		}
	}
	dc, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dc.Write(body); err != nil {
		t.Fatal(err)
	}
	resp, err := dc.CloseWithResponse()
	if err != nil {
		t.Fatal(err)
	}
	_, raw := peer.wait(nc)

	_, after, _ := bytes.Cut(raw, []byte("\r\n")) // after EHLO
	var d dotStuffer
	want := append(append([]byte(nil), group...), d.end(d.append(nil, body))...)
	if !bytes.Equal(after, want) {
		t.Fatalf("go-smtp wrote\n%q\ncommandGroup and dotStuffer write\n%q", after, want)
	}
	ours, err := readReply(replyReader(strings.NewReader(final+"\r\n")), 250)
	if err != nil || resp.StatusText != ours {
		t.Fatalf("go-smtp's final reply text %q, readReply's %q (%v)", resp.StatusText, ours, err)
	}
}

// The relay runs STARTTLS itself (plainToTLS) because go-smtp's client
// keeps the TLS connection where the caller cannot reach it — no method of
// *smtp.Client returns a net.Conn — and it sets tls.Config.ServerName
// itself because go-smtp fills it only from the address given to Dial,
// never on NewClient: verification then fails.
//
// If this fails: go-smtp now exposes its connection (plainToTLS could go
// back to NewClientStartTLS if the pipelined writes can use it), or sets
// ServerName (harmless: the relay sets it anyway).
func TestPinClientStartTLSKeepsTheConnection(t *testing.T) {
	t.Parallel()
	netConn := reflect.TypeOf((*net.Conn)(nil)).Elem()
	ct := reflect.TypeOf(&smtp.Client{})
	for i := 0; i < ct.NumMethod(); i++ {
		m := ct.Method(i)
		for j := 0; j < m.Type.NumOut(); j++ {
			if out := m.Type.Out(j); out.Implements(netConn) || out == reflect.TypeOf(&tls.Conn{}) {
				t.Fatalf("(*smtp.Client).%s returns a %v: go-smtp exposes its connection", m.Name, out)
			}
		}
	}

	ca, err := tlstest.NewCA("pin CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.ServerCert("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	serverTLS := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	for _, name := range []string{"", "127.0.0.1"} {
		nc, served := pinSTARTTLSServer(t, serverTLS)
		c, err := smtp.NewClientStartTLS(nc, &tls.Config{RootCAs: ca.Pool(), ServerName: name, MinVersion: tls.VersionTLS12})
		if err != nil {
			t.Fatal(err)
		}
		noopErr := c.Noop() // the handshake happens at the first command after STARTTLS
		_ = c.Close()
		serverErr := <-served
		switch {
		case name == "" && (noopErr == nil || !strings.Contains(noopErr.Error(), "ServerName")):
			t.Fatalf("go-smtp's client with no ServerName: %v; want the handshake refused for want of a ServerName", noopErr)
		case name != "" && (noopErr != nil || serverErr != nil):
			t.Fatalf("with ServerName set: client %v, server %v", noopErr, serverErr)
		}
	}
}

// pinSTARTTLSServer serves one session: greeting, EHLO offering STARTTLS,
// STARTTLS, the handshake, then 250 to every line until the client
// closes. served gets the handshake's error.
func pinSTARTTLSServer(t *testing.T, cfg *tls.Config) (net.Conn, <-chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	_ = server.SetDeadline(time.Now().Add(30 * time.Second))
	_ = client.SetDeadline(time.Now().Add(30 * time.Second))
	served := make(chan error, 1)
	go func() {
		defer func() { _ = server.Close() }()
		// The client sends nothing after STARTTLS until it has read the
		// 220, so this reader holds none of the handshake.
		r := bufio.NewReader(server)
		for _, reply := range []string{"220 pin.test\r\n", ehloOK("STARTTLS"), "220 2.0.0 Ready\r\n"} {
			if _, err := io.WriteString(server, reply); err != nil {
				served <- err
				return
			}
			if reply == "220 2.0.0 Ready\r\n" {
				break
			}
			if _, err := r.ReadString('\n'); err != nil {
				served <- err
				return
			}
		}
		s := tls.Server(server, cfg)
		if err := s.Handshake(); err != nil {
			served <- err
			return
		}
		served <- nil
		tr := bufio.NewReader(s)
		for {
			if _, err := tr.ReadString('\n'); err != nil {
				return
			}
			if _, err := io.WriteString(s, "250 2.0.0 OK\r\n"); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { _ = client.Close() })
	return client, served
}
