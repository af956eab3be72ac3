package smtpd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/o365relay/o365relay/config/waitfor"
	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/reply"
	"github.com/o365relay/o365relay/relay/rewrite"
)

// recordSink keeps what it is given, or fails as told.
type recordSink struct {
	mu   sync.Mutex
	envs []*envelope.Envelope
	data [][]byte
	err  error
}

func (k *recordSink) Submit(ctx context.Context, env *envelope.Envelope, body io.Reader) (string, error) {
	b, err := io.ReadAll(body)
	if err != nil {
		return "", err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.err != nil {
		return "", k.err
	}
	env.Size = int64(len(b))
	k.envs = append(k.envs, env)
	k.data = append(k.data, b)
	return "OK " + string(env.ID) + " queued", nil
}

func (k *recordSink) last(t *testing.T) (*envelope.Envelope, []byte) {
	t.Helper()
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.envs) == 0 {
		t.Fatal("sink got no message")
	}
	return k.envs[len(k.envs)-1], k.data[len(k.data)-1]
}

func allowAll(string) (string, bool) { return "relay@contoso.com", true }

func startServer(t *testing.T, mod func(*Options)) (*Server, *recordSink, *observer.ObservedLogs) {
	t.Helper()
	sink := &recordSink{}
	core, logs := observer.New(zap.DebugLevel)
	opts := Options{
		Addr:            "127.0.0.1:0",
		AllowedNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		Hostname:        "relay.test",
		Sink:            sink,
		Route:           allowAll,
		Logger:          zap.New(core),
	}
	if mod != nil {
		mod(&opts)
	}
	return serve(t, opts), sink, logs
}

// serve starts a Server with opts on its own goroutine and shuts it down
// (checking both errors) when tb ends.
func serve(tb testing.TB, opts Options) *Server {
	tb.Helper()
	s, err := New(opts)
	if err != nil {
		tb.Fatal(err)
	}
	if err := s.Listen(); err != nil {
		tb.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			tb.Errorf("shutdown: %v", err)
		}
		if err := <-done; err != nil {
			tb.Errorf("serve: %v", err)
		}
	})
	return s
}

// client is a raw SMTP dialog over TCP: what a real client sends, byte for byte.
type client struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, addr string) *client {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { _ = c.Close() })
	return &client{t: t, c: c, r: bufio.NewReader(c)}
}

// reply reads one (possibly multi-line) reply and returns its last line.
func (c *client) reply() string {
	c.t.Helper()
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatalf("reading reply: %v (got %q)", err, line)
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 4 || line[3] != '-' {
			return line
		}
	}
}

func (c *client) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.c, s); err != nil {
		c.t.Fatal(err)
	}
}

func (c *client) cmd(line, wantPrefix string) string {
	c.t.Helper()
	c.send(line + "\r\n")
	got := c.reply()
	if !strings.HasPrefix(got, wantPrefix) {
		c.t.Fatalf("%s: got %q, want %q...", line, got, wantPrefix)
	}
	return got
}

func (c *client) transaction(helo, from string, to []string, body string) string {
	c.t.Helper()
	if g := c.reply(); !strings.HasPrefix(g, "220 ") {
		c.t.Fatalf("greeting %q", g)
	}
	c.cmd(helo, "250")
	c.cmd("MAIL FROM:<"+from+">", "250")
	for _, r := range to {
		c.cmd("RCPT TO:<"+r+">", "250")
	}
	c.cmd("DATA", "354")
	c.send(body)
	return c.reply()
}

func TestAcceptsAndPrependsOnlyReceived(t *testing.T) {
	t.Parallel()
	s, sink, logs := startServer(t, nil)
	c := dial(t, s.Addr().String())
	body := "From: app@contoso.com\r\nSubject: hi\r\n\r\n..leading dot\r\n\xe9\xe8 8-bit\r\n" + strings.Repeat("x", 998) + "\r\n"
	got := c.transaction("HELO printer", "app@contoso.com", []string{"a@example.org", "b@example.org"}, body+".\r\n")
	env, data := sink.last(t)
	if want := "250 2.0.0 OK " + string(env.ID) + " queued"; got != want {
		t.Fatalf("final reply %q, want %q", got, want)
	}
	hdrEnd := bytes.Index(data, []byte("\r\n\t"+time.Now().Format("Mon"))) // folded date line
	if !bytes.HasPrefix(data, []byte("Received: from printer ([127.0.0.1])\r\n\tby relay.test (o365relay) with ESMTP id "+string(env.ID)+";\r\n")) || hdrEnd < 0 {
		t.Fatalf("Received header wrong: %q", data[:min(200, len(data))])
	}
	rest := data[bytes.Index(data, []byte("From: ")):]
	// go-smtp dot-unstuffs "..leading" to ".leading"; everything else is as sent.
	if want := strings.Replace(body, "..leading", ".leading", 1); string(rest) != want {
		t.Fatalf("body changed:\n got %q\nwant %q", rest, want)
	}
	if env.From != "app@contoso.com" || len(env.To) != 2 || env.Mailbox != "relay@contoso.com" || env.Helo != "printer" {
		t.Fatalf("envelope %+v", env)
	}
	if logs.FilterMessage("message accepted").Len() != 1 {
		t.Fatal("no accepted log line")
	}
	for _, e := range logs.All() {
		for _, f := range e.Context {
			if strings.Contains(f.String, "8-bit") || strings.Contains(f.String, "leading dot") {
				t.Fatalf("message body reached a log line: %v", e)
			}
		}
	}
}

func TestRefusedNetworkIsAnsweredAndLogged(t *testing.T) {
	t.Parallel()
	s, _, logs := startServer(t, func(o *Options) {
		o.AllowedNetworks = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	})
	c := dial(t, s.Addr().String())
	if got := c.reply(); !strings.HasPrefix(got, "554 5.7.1 ") {
		t.Fatalf("got %q", got)
	}
	if _, err := c.r.ReadByte(); err == nil {
		t.Fatal("connection not closed after refusal")
	}
	if n := logs.FilterMessage("connection refused").Len(); n != 1 {
		t.Fatalf("refusal logged %d times", n)
	}
}

func TestEmptyAllowedNetworksDeniesEveryone(t *testing.T) {
	t.Parallel()
	s, _, _ := startServer(t, func(o *Options) { o.AllowedNetworks = nil })
	c := dial(t, s.Addr().String())
	if got := c.reply(); !strings.HasPrefix(got, "554 5.7.1 ") {
		t.Fatalf("got %q", got)
	}
}

func TestPerClientConnectionCap(t *testing.T) {
	t.Parallel()
	s, _, _ := startServer(t, func(o *Options) { o.MaxConnectionsPerClient = 2 })
	a, b := dial(t, s.Addr().String()), dial(t, s.Addr().String())
	a.reply()
	b.reply()
	c := dial(t, s.Addr().String())
	if got := c.reply(); !strings.HasPrefix(got, "421 4.7.0 ") {
		t.Fatalf("third connection got %q", got)
	}
	a.cmd("QUIT", "221")
	// The slot is given back once the server has closed the first
	// connection (asynchronously after QUIT); then a new one is let in.
	waitfor.Cond(t, "the first connection's slot given back", func() bool { return s.OpenConnections() == 1 })
	d := dial(t, s.Addr().String())
	if got := d.reply(); !strings.HasPrefix(got, "220 ") {
		t.Fatalf("connection after the slot was given back got %q", got)
	}
}

func TestBareLineEndings(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, body, want string
		mode             LineEndings
		stored           string
	}{
		{"bare LF rejected", "Subject: x\n\nbody\r\n.\r\n", "550 5.6.0 ", RejectBareLineEndings, ""},
		{"bare CR rejected", "Subject: x\r\n\r\nbo\rdy\r\n.\r\n", "550 5.6.0 ", RejectBareLineEndings, ""},
		{"bare LF normalised", "Subject: x\n\nbody\r\n.\r\n", "250 ", NormalizeBareLineEndings, "Subject: x\r\n\r\nbody\r\n"},
		{"bare CR normalised", "Subject: x\r\n\r\nbo\rdy\r\n.\r\n", "250 ", NormalizeBareLineEndings, "Subject: x\r\n\r\nbo\r\ndy\r\n"},
		// What curl --crlf makes of CRLF input: CR CR LF. go-smtp's own
		// DATA reader misses the end of data after it; the relay frames
		// DATA itself (data.go).
		{"CR CR LF before the end rejected", "Subject: x\r\r\n\r\r\nbody\r\r\n.\r\n", "550 5.6.0 ", RejectBareLineEndings, ""},
		{"CR CR LF before the end normalised", "Subject: x\r\r\n\r\r\nbody\r\r\n..dot\r\r\n.\r\n", "250 ", NormalizeBareLineEndings,
			"Subject: x\r\n\r\n\r\n\r\nbody\r\n\r\n.dot\r\n\r\n"},
		// A dot line's CR that is not followed by LF: go-smtp dropped
		// it, and the CR CR repair's marker NUL reached the spool.
		{"dot then bare CR rejected", "Subject: x\r\n\r\n.\rX\r\n.\r\n", "550 5.6.0 ", RejectBareLineEndings, ""},
		{"dot then bare CR normalised", "Subject: x\r\n\r\n.\rX\r\n.\r\n", "250 ", NormalizeBareLineEndings, "Subject: x\r\n\r\n\r\nX\r\n"},
		{"dot then CR CR LF rejected", "Subject: x\r\n\r\n.\r\r\nbody\r\n.\r\n", "550 5.6.0 ", RejectBareLineEndings, ""},
		{"dot then CR CR LF normalised", "Subject: x\r\n\r\n.\r\r\nbody\r\n.\r\n", "250 ", NormalizeBareLineEndings, "Subject: x\r\n\r\n\r\n\r\nbody\r\n"},
		{"NUL rejected", "Subject: x\r\n\r\nbo\x00dy\r\n.\r\n", "550 5.6.0 ", RejectBareLineEndings, ""},
		{"NUL rejected when normalising", "Subject: x\r\n\r\nbo\r\x00dy\r\n.\r\n", "550 5.6.0 ", NormalizeBareLineEndings, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, sink, _ := startServer(t, func(o *Options) { o.LineEndings = tc.mode })
			c := dial(t, s.Addr().String())
			got := c.transaction("EHLO app", "app@contoso.com", []string{"a@example.org"}, tc.body)
			if !strings.HasPrefix(got, tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
			if tc.stored != "" {
				_, data := sink.last(t)
				if !bytes.HasSuffix(data, []byte(tc.stored)) {
					t.Fatalf("stored %q", data)
				}
			} else if len(sink.envs) != 0 {
				t.Fatal("a refused message reached the sink")
			}
			// The session survives the refusal.
			c.cmd("NOOP", "250")
		})
	}
}

// A sender whose rule rewrites From: gets 552 5.3.4 at intake for a
// header section the rewrite would not read (rewrite.MaxHeader,
// our Received: included), instead of a 250 and Exchange's SendAsDenied
// later; other senders are not limited.
func TestRewriteHeaderLimitAtIntake(t *testing.T) {
	t.Parallel()
	s, sink, _ := startServer(t, func(o *Options) {
		o.Rewrite = func(sender string) rewrite.Mode {
			if sender == "app@contoso.com" {
				return rewrite.EnvelopeFrom
			}
			return rewrite.Envelope
		}
	})
	header := func(n int) string { // n octets of X-Pad: fields
		line := "X-Pad: " + strings.Repeat("p", 991) + "\r\n"
		pad := strings.Repeat(line, n/len(line)) + "X-Pad: " + strings.Repeat("p", n%len(line)) + "\r\n"
		return "From: App <app@contoso.com>\r\n" + pad + "\r\nbody\r\n.\r\n"
	}
	for _, tc := range []struct {
		from string
		pad  int
		want string
	}{
		{"app@contoso.com", rewrite.MaxHeader - 2000, "250 "},
		{"app@contoso.com", rewrite.MaxHeader, "552 5.3.4 Header section longer than 262144 octets"},
		{"other@contoso.com", rewrite.MaxHeader + 1000, "250 "},
	} {
		c := dial(t, s.Addr().String())
		got := c.transaction("EHLO app", tc.from, []string{"a@example.org"}, header(tc.pad))
		if !strings.HasPrefix(got, tc.want) {
			t.Errorf("%s, %d octets of padding: %q, want %q", tc.from, tc.pad, got, tc.want)
		}
		c.cmd("NOOP", "250")
	}
	if n := len(sink.envs); n != 2 {
		t.Errorf("sink got %d messages, want 2", n)
	}
}

func TestLoopDetection(t *testing.T) {
	t.Parallel()
	s, _, _ := startServer(t, nil)
	c := dial(t, s.Addr().String())
	body := strings.Repeat("Received: from x by y; Sat, 28 Nov 2026 12:00:00 +0000\r\n", 51) + "Subject: loop\r\n\r\nx\r\n.\r\n"
	if got := c.transaction("EHLO app", "app@contoso.com", []string{"a@example.org"}, body); !strings.HasPrefix(got, "554 5.4.6 ") {
		t.Fatalf("got %q", got)
	}
	c2 := dial(t, s.Addr().String())
	body = strings.Repeat("Received: from x by y; Sat, 28 Nov 2026 12:00:00 +0000\r\n", 50) + "Subject: ok\r\n\r\nReceived: in the body does not count\r\n.\r\n"
	if got := c2.transaction("EHLO app", "app@contoso.com", []string{"a@example.org"}, body); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("50 hops refused: %q", got)
	}
}

func TestSinkErrorsKeepTheirCodes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want string
	}{
		{reply.New(452, reply.EnhancedCode{4, 3, 1}, "Insufficient system storage"), "452 4.3.1 Insufficient system storage"},
		{fmt.Errorf("wrapped: %w", &reply.Error{Code: 554, Enhanced: reply.EnhancedCode{5, 2, 252}, Text: "SendAsDenied", Stage: reply.StageData}), "554 5.2.252 SendAsDenied"},
		{errors.New("disk on fire at /secret/path"), "451 4.3.0 "},
	} {
		s, sink, _ := startServer(t, nil)
		sink.err = tc.err
		c := dial(t, s.Addr().String())
		got := c.transaction("EHLO app", "app@contoso.com", []string{"a@example.org"}, "Subject: x\r\n\r\nx\r\n.\r\n")
		if !strings.HasPrefix(got, tc.want) || strings.Contains(got, "secret") {
			t.Errorf("%v: got %q, want %q", tc.err, got, tc.want)
		}
	}
}

func TestSenderPolicyAndAddressChecks(t *testing.T) {
	t.Parallel()
	s, _, _ := startServer(t, func(o *Options) {
		o.Route = func(sender string) (string, bool) {
			if strings.HasSuffix(sender, "@contoso.com") {
				return "relay@contoso.com", true
			}
			return "", false
		}
	})
	c := dial(t, s.Addr().String())
	c.reply()
	c.cmd("EHLO app", "250")
	c.cmd("MAIL FROM:<evil@example.net>", `550 5.7.1 Sender evil@example.net is not allowed to relay: no rule in the config file's senders list matches it; add a rule for the address, its "*@domain", or a catch-all "*"`)
	c.cmd("MAIL FROM:<>", "550 5.7.1 Sender <> (null sender) is not allowed to relay: ")
	c.cmd("MAIL FROM:<jos\u00e9@contoso.com>", "553 5.6.7 ")
	c.cmd("MAIL FROM:<jos\u00e9@contoso.com> SMTPUTF8", "250")
	c.cmd("RCPT TO:<noatsign>", "501 ")
	c.cmd("RCPT TO:<b\u00fccher@example.org>", "250")
	c.cmd("RSET", "250")
	c.cmd("MAIL FROM:<app@contoso.com>", "250")
	c.cmd("RCPT TO:<b\u00fccher@example.org>", "553 5.6.7 ")
	c.cmd("RCPT TO:<a@example.org>", "250")
}

func TestRecipientLimit(t *testing.T) {
	t.Parallel()
	s, _, _ := startServer(t, func(o *Options) { o.MaxRecipients = 2 })
	c := dial(t, s.Addr().String())
	c.reply()
	c.cmd("EHLO app", "250")
	c.cmd("MAIL FROM:<app@contoso.com>", "250")
	c.cmd("RCPT TO:<a@example.org>", "250")
	c.cmd("RCPT TO:<b@example.org>", "250")
	c.cmd("RCPT TO:<c@example.org>", "452 4.5.3 ")
}

func TestShutdownRefusesNewTransactions(t *testing.T) {
	t.Parallel()
	s, _, _ := startServer(t, nil)
	c := dial(t, s.Addr().String())
	c.reply()
	c.cmd("EHLO app", "250")
	s.draining.Store(true) // as Shutdown does first
	c.cmd("MAIL FROM:<app@contoso.com>", "421 4.3.2 ")
	s.draining.Store(false)
}

func TestForeignProtocolsAreAnsweredAndClosed(t *testing.T) {
	t.Parallel()
	s, _, _ := startServer(t, nil)
	for _, first := range []string{"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"} {
		c := dial(t, s.Addr().String())
		c.reply()
		c.send(first)
		if got := c.reply(); !strings.HasPrefix(got, "500 5.5.1 This is an SMTP server") {
			t.Fatalf("%q: got %q", first[:4], got)
		}
		if _, err := c.r.ReadByte(); err == nil {
			t.Fatal("connection left open")
		}
	}
}

func TestTooManyErrorsIs421(t *testing.T) {
	t.Parallel()
	s, _, _ := startServer(t, nil)
	c := dial(t, s.Addr().String())
	c.reply()
	c.cmd("EHLO x", "250")
	// Not syntax errors: out of sequence, and an address refusal.
	c.cmd("RCPT TO:<a@example.org>", "502 5.5.1 ")
	c.cmd("DATA", "502 5.5.1 ")
	c.cmd("MAIL FROM:<jos\u00e9@contoso.com>", "553 5.6.7 ")
	// Syntax errors: the third is answered, then 421 and close.
	c.cmd("BOGUS", "501 5.5.2 ")
	c.cmd("MAIL FROM:<<>>", "501 5.5.2 ")
	c.cmd("MAIL FROM:<app@contoso.com> NOSUCH=1", "501 5.5.4 ")
	if got := c.reply(); got != "421 4.7.0 Too many errors, closing connection" {
		t.Fatalf("got %q", got)
	}
	if _, err := c.r.ReadByte(); err == nil {
		t.Fatal("connection left open after 421")
	}
}

func TestLongLine(t *testing.T) {
	t.Parallel()
	s, _, _ := startServer(t, nil)
	c := dial(t, s.Addr().String())
	c.reply()
	c.cmd("EHLO "+strings.Repeat("a", 3000), "500 5.5.2 Line too long")
}

func TestSessionLifetime(t *testing.T) {
	t.Parallel()
	s, _, _ := startServer(t, func(o *Options) { o.MaxSessionDuration = time.Nanosecond })
	c := dial(t, s.Addr().String())
	c.reply()
	c.send("EHLO x\r\n")
	if got := c.reply(); !strings.HasPrefix(got, "421 4.4.2 ") {
		t.Fatalf("got %q", got)
	}
}
