package smtpd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/o365relay/o365relay/config/waitfor"
	"github.com/o365relay/o365relay/relay/envelope"
)

// expectClosed fails unless the server closes the connection with nothing
// more to say.
func (c *client) expectClosed() {
	c.t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if line, err := c.r.ReadString('\n'); err == nil || line != "" {
		c.t.Fatalf("connection still open or more said: %q %v", line, err)
	}
}

// panicSink panics after reading the body, with the body in the panic
// value: what must never reach a log line.
type panicSink struct{ recordSink }

func (k *panicSink) Submit(ctx context.Context, env *envelope.Envelope, body io.Reader) (string, error) {
	b, _ := io.ReadAll(body)
	if strings.Contains(string(b), "PANIC") {
		panic(fmt.Errorf("sink exploded on %q", b))
	}
	return k.recordSink.Submit(ctx, env, strings.NewReader(string(b)))
}

func checkNoPanicValue(t *testing.T, logsText string, secret string) {
	t.Helper()
	if !strings.Contains(logsText, "panic contained") {
		t.Fatalf("panic not logged:\n%s", logsText)
	}
	if strings.Contains(logsText, secret) {
		t.Fatalf("panic value (with %q) reached the log:\n%s", secret, logsText)
	}
}

func TestPanicInRouteIsContained(t *testing.T) {
	t.Parallel()
	s, sink, logs := startServer(t, func(o *Options) {
		o.Route = func(sender string) (string, bool) {
			if strings.HasPrefix(sender, "boom") {
				panic("token=eyJsecret-route " + sender)
			}
			return "relay@contoso.com", true
		}
	})
	// A session that is open while another one panics.
	other := dial(t, s.Addr().String())
	other.reply()
	other.cmd("EHLO other", "250")
	other.cmd("MAIL FROM:<app@contoso.com>", "250")

	c := dial(t, s.Addr().String())
	c.reply()
	c.cmd("EHLO app", "250")
	// Pipelined: the RCPT after the panicking MAIL gets no answer.
	c.send("MAIL FROM:<boom@contoso.com>\r\nRCPT TO:<a@example.org>\r\n")
	if got := c.reply(); !strings.HasPrefix(got, "421 4.3.0 ") {
		t.Fatalf("panicking MAIL answered %q", got)
	}
	c.expectClosed()

	other.cmd("RCPT TO:<a@example.org>", "250")
	other.cmd("DATA", "354")
	other.send("Subject: x\r\n\r\nstill served\r\n.\r\n")
	if got := other.reply(); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("the other session after the panic: %q", got)
	}
	if got := dial(t, s.Addr().String()).transaction("EHLO new", "app@contoso.com", []string{"a@example.org"}, "Subject: y\r\n\r\ny\r\n.\r\n"); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("a new session after the panic: %q", got)
	}
	if len(sink.envs) != 2 {
		t.Fatalf("sink got %d messages", len(sink.envs))
	}
	checkNoPanicValue(t, logText(logs), "eyJsecret-route")
}

func TestPanicInSinkIsContained(t *testing.T) {
	t.Parallel()
	ps := &panicSink{}
	s, _, logs := startServer(t, func(o *Options) { o.Sink = ps })
	c := dial(t, s.Addr().String())
	got := c.transaction("EHLO app", "app@contoso.com", []string{"a@example.org"}, "Subject: x\r\n\r\nPANIC body-text-secret\r\n.\r\nNOOP\r\n")
	if !strings.HasPrefix(got, "421 4.3.0 ") {
		t.Fatalf("panicking sink answered %q", got)
	}
	c.expectClosed()
	if got := dial(t, s.Addr().String()).transaction("EHLO new", "app@contoso.com", []string{"a@example.org"}, "Subject: y\r\n\r\ny\r\n.\r\n"); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("a new session after the panic: %q", got)
	}
	checkNoPanicValue(t, logText(logs), "body-text-secret")
	// Shutdown (in cleanup) must not wait for the panicked DATA.
}

// A panic in go-smtp's own handler path (here: the hook it calls for EHLO)
// is logged without its value too, and answered with our 421 4.3.0.
func TestPanicInGoSMTPHandlerIsWorded(t *testing.T) {
	t.Parallel()
	s, _, logs := startServer(t, nil)
	z := zapPrintf{s.log}
	z.Printf("panic serving %v: %v\n%s", fakeAddr("127.0.0.9:1234"), errors.New("password=hunter2"), []byte("stack"))
	checkNoPanicValue(t, logText(logs), "hunter2")
	if r := goSMTPReplies["421 4.0.0 Internal server error\r\n"]; string(r) != replyInternal {
		t.Fatalf("go-smtp's panic reply not rewritten: %q", r)
	}
}

type fakeAddr string

func (a fakeAddr) Network() string { return "tcp" }
func (a fakeAddr) String() string  { return string(a) }

// logText renders the observed log as the daemon's JSON lines.
func logText(logs *observer.ObservedLogs) string {
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	var b strings.Builder
	for _, e := range logs.All() {
		buf, err := enc.EncodeEntry(e.Entry, e.Context)
		if err != nil {
			return err.Error()
		}
		b.Write(buf.Bytes())
		buf.Free()
	}
	return b.String()
}

func TestCommandTimeout(t *testing.T) {
	t.Parallel()
	s, _, _ := startServer(t, func(o *Options) { o.CommandTimeout = 200 * time.Millisecond })
	c := dial(t, s.Addr().String())
	c.reply()
	c.cmd("EHLO app", "250")
	start := time.Now()
	if got := c.reply(); !strings.HasPrefix(got, "421 4.4.2 ") {
		t.Fatalf("idle client got %q", got)
	}
	c.expectClosed()
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Fatalf("closed after %v, before the command timeout", d)
	}
}

// A slow-drip client: each byte arrives well within the command timeout,
// but the whole DATA phase has its own deadline. It hears 421, nothing is
// stored, and what it sends after the deadline is not read as commands.
func TestSlowDripDataHitsTheDataDeadline(t *testing.T) {
	t.Parallel()
	s, sink, _ := startServer(t, func(o *Options) {
		o.CommandTimeout = 2 * time.Second
		o.DataTimeout = 400 * time.Millisecond
	})
	c := dial(t, s.Addr().String())
	c.reply()
	c.cmd("EHLO app", "250")
	c.cmd("MAIL FROM:<app@contoso.com>", "250")
	c.cmd("RCPT TO:<a@example.org>", "250")
	c.cmd("DATA", "354")
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		// One byte every 20 ms: each read is well inside CommandTimeout,
		// the whole body is not inside DataTimeout. Body lines that are
		// also commands: they must not be executed.
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for _, b := range []byte("Subject: drip\r\n\r\nRSET\r\nMAIL FROM:<x@contoso.com>\r\n") {
			if _, err := c.c.Write([]byte{b}); err != nil {
				return
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	start := time.Now()
	got := c.reply()
	close(stop)
	<-done
	if !strings.HasPrefix(got, "421 4.4.2 ") {
		t.Fatalf("slow-drip DATA got %q", got)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("answered after %v, before the DATA deadline", d)
	}
	c.expectClosed()
	if len(sink.envs) != 0 {
		t.Fatal("a partial message reached the sink")
	}
}

func TestSizeLimitAdvertisedAndEnforced(t *testing.T) {
	t.Parallel()
	s, sink, _ := startServer(t, func(o *Options) { o.MaxMessageBytes = 1000 })
	c := dial(t, s.Addr().String())
	c.reply()
	c.send("EHLO app\r\n")
	var caps []string
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		caps = append(caps, strings.TrimSpace(line[4:]))
		if line[3] == ' ' {
			break
		}
	}
	ehlo := strings.Join(caps, "|")
	if !strings.Contains(ehlo, "|SIZE 1000") || strings.Contains(ehlo, "CHUNKING") {
		t.Fatalf("EHLO capabilities %q: want SIZE 1000 and no CHUNKING", ehlo)
	}
	c.cmd("MAIL FROM:<app@contoso.com> SIZE=1001", "552 5.3.4 ")
	// The client lies in SIZE=: the limit still holds, and the session
	// goes on (the rest of the message was read and discarded).
	c.cmd("MAIL FROM:<app@contoso.com> SIZE=10", "250")
	c.cmd("RCPT TO:<a@example.org>", "250")
	c.cmd("DATA", "354")
	c.send("Subject: big\r\n\r\n" + strings.Repeat("0123456789012345678901234567890123456789\r\n", 40) + ".\r\n")
	if got := c.reply(); !strings.HasPrefix(got, "552 5.3.4 ") {
		t.Fatalf("oversized body got %q", got)
	}
	c.cmd("NOOP", "250")
	if len(sink.envs) != 0 {
		t.Fatal("an oversized message reached the sink")
	}
	// Exactly the limit is within it (RFC 1870 §6: only what exceeds it
	// is refused), declared or not.
	exact := "Subject: exact\r\n\r\n" + strings.Repeat("e", 1000-len("Subject: exact\r\n\r\n")-2) + "\r\n"
	c.cmd("MAIL FROM:<app@contoso.com> SIZE=1000", "250")
	c.cmd("RCPT TO:<a@example.org>", "250")
	c.cmd("DATA", "354")
	c.send(exact + ".\r\n")
	if got := c.reply(); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("a body of exactly the limit got %q", got)
	}
	if _, data := sink.last(t); !strings.HasSuffix(string(data), exact) {
		t.Fatal("stored body differs")
	}
}

// A DATA line beyond the line limit: 500 5.5.2, once, and the connection
// closes (the rest of the stream cannot be framed).
func TestDataLineTooLong(t *testing.T) {
	t.Parallel()
	s, sink, _ := startServer(t, nil)
	c := dial(t, s.Addr().String())
	got := c.transaction("EHLO app", "app@contoso.com", []string{"a@example.org"}, "Subject: x\r\n\r\n"+strings.Repeat("y", 3000)+"\r\n.\r\n")
	if !strings.HasPrefix(got, "500 5.5.2 Line too long") {
		t.Fatalf("got %q", got)
	}
	c.expectClosed()
	if len(sink.envs) != 0 {
		t.Fatal("message with an overlong line reached the sink")
	}
}

func TestBDATIsRefused(t *testing.T) {
	t.Parallel()
	s, sink, _ := startServer(t, nil)
	c := dial(t, s.Addr().String())
	c.reply()
	c.cmd("EHLO app", "250")
	c.cmd("MAIL FROM:<app@contoso.com>", "250")
	c.cmd("RCPT TO:<a@example.org>", "250")
	c.send("BDAT 20 LAST\r\nSubject: x\r\n\r\nbody\r\n")
	if got := c.reply(); !strings.HasPrefix(got, "502 5.5.1 ") {
		t.Fatalf("BDAT got %q", got)
	}
	c.cmd("NOOP", "250")
	if len(sink.envs) != 0 {
		t.Fatal("a BDAT message reached the sink")
	}
}

// Every refusal of a MAIL or RCPT argument says why.
func TestMalformedMailAndRcptSayWhy(t *testing.T) {
	t.Parallel()
	s, _, _ := startServer(t, nil)
	for _, tc := range []struct{ mail, rcpt, want string }{
		{"MAIL FROM:app@contoso.com>", "", "501 5.5.4 "},
		{"MAIL FROM:<app@contoso.com> NOSUCH=1", "", "501 5.5.4 "},
		{"MAIL FROM:<app@contoso.com", "", "501 5.5.2 "},
		{"MAIL FROM:<app@contoso.com> SIZE=big", "", "501 5.5.4 "},
		{"MAIL FROM:<" + strings.Repeat("a", 250) + "@contoso.com>", "", "501 5.1.7 "},
		{"MAIL FROM:<app\x01@contoso.com>", "", "501 5.1.7 "},
		{"MAIL FROM:<j\u00f6rg@contoso.com>", "", "553 5.6.7 "},
		{"MAIL FROM:<app@contoso.com>", "RCPT TO:<>", "501 5.5.2 "},
		{"MAIL FROM:<app@contoso.com>", "RCPT TO:<a@>", "501 "},
		{"MAIL FROM:<app@contoso.com>", "RCPT TO:<b\u00fccher@example.org>", "553 5.6.7 "},
		{"MAIL FROM:<app@contoso.com>", "RCPT TO:<a@example.org> NOTIFY=NEVER", "504 5.5.4 "},
	} {
		c := dial(t, s.Addr().String())
		c.reply()
		c.cmd("EHLO app", "250")
		line, want := tc.mail, tc.want
		if tc.rcpt != "" {
			c.cmd(tc.mail, "250")
			line = tc.rcpt
		}
		got := c.cmd(line, want)
		if len(strings.TrimSpace(got[len(want):])) < 8 {
			t.Errorf("%q: reply %q gives no reason", line, got)
		}
	}
}

// Found by FuzzSession: go-smtp goes on parsing what the client pipelined
// into its buffer after our 421. None of it may be routed or stored.
func TestNothingHappensAfterTheLastWord(t *testing.T) {
	t.Parallel()
	s, sink, _ := startServer(t, nil)
	c := dial(t, s.Addr().String())
	c.reply()
	c.send("EHLO app\r\nFOO\r\nFOO\r\nFOO\r\nMAIL FROM:<app@contoso.com>\r\nRCPT TO:<a@example.org>\r\nDATA\r\nSubject: x\r\n\r\nx\r\n.\r\n")
	c.reply()
	for i := 0; i < 3; i++ {
		if got := c.reply(); !strings.HasPrefix(got, "50") {
			t.Fatalf("syntax error %d answered %q", i+1, got)
		}
	}
	if got := c.reply(); !strings.HasPrefix(got, "421 4.7.0 ") {
		t.Fatalf("got %q", got)
	}
	c.expectClosed()
	// go-smtp has finished with the connection (and whatever it had
	// buffered) once it has closed it, giving back its slot.
	waitfor.Cond(t, "go-smtp done with the connection", func() bool { return s.OpenConnections() == 0 })
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if len(sink.envs) != 0 {
		t.Fatal("a message pipelined after the 421 was stored")
	}
}
