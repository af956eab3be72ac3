package main

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/o365relay/o365relay/config/waitfor"
	"github.com/o365relay/o365relay/relay/relaytest"
)

// The relay's intake limits and refusals, scripted byte for byte over real
// TCP against the built binary
// (docs/design.md#protocol-abuse-gets-a-reply-never-an-outage; the replies
// are in docs/intake.md). Timeouts that have no setting
// (command, DATA and session deadlines) are tested in relay/smtpd with
// injected short values: TestCommandTimeout, TestSlowDripDataHitsTheDataDeadline,
// TestSessionLifetime.

// hardConn is a raw SMTP dialog from a chosen local address.
type hardConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func hardDial(t *testing.T, addr, from string) *hardConn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	t.Cleanup(func() { _ = c.Close() })
	return &hardConn{t: t, c: c, r: bufio.NewReader(c)}
}

// reply reads one reply (all its lines) and returns them joined by "|".
func (h *hardConn) reply() string {
	h.t.Helper()
	var lines []string
	for {
		line, err := h.r.ReadString('\n')
		if err != nil {
			h.t.Fatalf("reading reply: %v (got %q after %q)", err, line, lines)
		}
		line = strings.TrimRight(line, "\r\n")
		lines = append(lines, line)
		if len(line) < 4 || line[3] != '-' {
			return strings.Join(lines, "|")
		}
	}
}

func (h *hardConn) send(s string) {
	h.t.Helper()
	if _, err := io.WriteString(h.c, s); err != nil {
		h.t.Fatal(err)
	}
}

// cmd sends one line and checks the reply's last line starts with want.
func (h *hardConn) cmd(line, want string) string {
	h.t.Helper()
	h.send(line + "\r\n")
	got := h.reply()
	last := got[strings.LastIndexByte(got, '|')+1:]
	if !strings.HasPrefix(last, want) {
		h.t.Fatalf("%.60q: got %q, want %q...", line, got, want)
	}
	return got
}

// closed fails unless the relay closes the connection without saying more:
// the read must end with the relay's close (EOF or a reset), not with the
// read deadline, which only bounds a failure.
func (h *hardConn) closed() {
	h.t.Helper()
	_ = h.c.SetReadDeadline(time.Now().Add(waitfor.Timeout))
	b, err := h.r.ReadString('\n')
	var ne net.Error
	if err == nil || b != "" || (errors.As(err, &ne) && ne.Timeout()) {
		h.t.Fatalf("connection not closed: %q %v", b, err)
	}
}

// start greets and opens a transaction up to the 354.
func (h *hardConn) start(rcpts ...string) {
	h.t.Helper()
	h.reply()
	h.cmd("EHLO hardening.test", "250")
	h.cmd("MAIL FROM:<"+relaytest.Mailbox+">", "250")
	for _, r := range rcpts {
		h.cmd("RCPT TO:<"+r+">", "250")
	}
	h.cmd("DATA", "354")
}

func TestHardeningLimitsAndRefusals(t *testing.T) {
	t.Parallel()
	e := startE2E(t, nil, "O365RELAY_MAX_MESSAGE_BYTES=20000", "O365RELAY_MAX_RECIPIENTS=3")
	to := "someone@fabrikam.example"
	body := func(n int) string { return "Subject: x\r\n\r\n" + strings.Repeat(strings.Repeat("z", 98)+"\r\n", n) }

	t.Run("SIZE advertised, SIZE= over the limit refused", func(t *testing.T) {
		h := hardDial(t, e.smtp, "")
		h.reply()
		if ehlo := h.cmd("EHLO hardening.test", "250"); !strings.Contains(ehlo, "|250-SIZE 20000|") && !strings.HasSuffix(ehlo, "|250 SIZE 20000") {
			t.Fatalf("EHLO does not advertise SIZE 20000: %q", ehlo)
		}
		h.cmd("MAIL FROM:<"+relaytest.Mailbox+"> SIZE=20001", "552 5.3.4 ")
	})
	t.Run("SIZE= lied: 552 5.3.4 after the body", func(t *testing.T) {
		h := hardDial(t, e.smtp, "")
		h.reply()
		h.cmd("EHLO hardening.test", "250")
		h.cmd("MAIL FROM:<"+relaytest.Mailbox+"> SIZE=100", "250")
		h.cmd("RCPT TO:<"+to+">", "250")
		h.cmd("DATA", "354")
		h.send(body(300) + ".\r\n")
		if got := h.reply(); !strings.HasPrefix(got, "552 5.3.4 ") {
			t.Fatalf("30 KB body with SIZE=100 got %q", got)
		}
		h.cmd("NOOP", "250")
	})
	t.Run("recipients beyond the limit: 452 4.5.3", func(t *testing.T) {
		h := hardDial(t, e.smtp, "")
		h.reply()
		h.cmd("EHLO hardening.test", "250")
		h.cmd("MAIL FROM:<"+relaytest.Mailbox+">", "250")
		for i := 0; i < 3; i++ {
			h.cmd("RCPT TO:<r"+string(rune('0'+i))+"@fabrikam.example>", "250")
		}
		h.cmd("RCPT TO:<r4@fabrikam.example>", "452 4.5.3 ")
	})
	t.Run("command line too long: 500 5.5.2 and close", func(t *testing.T) {
		h := hardDial(t, e.smtp, "")
		h.reply()
		h.cmd("EHLO "+strings.Repeat("h", 3000), "500 5.5.2 ")
		h.closed()
	})
	t.Run("DATA line too long: 500 5.5.2 and close", func(t *testing.T) {
		h := hardDial(t, e.smtp, "")
		h.start(to)
		h.send("Subject: x\r\n\r\n" + strings.Repeat("l", 2500) + "\r\n.\r\n")
		if got := h.reply(); !strings.HasPrefix(got, "500 5.5.2 ") {
			t.Fatalf("got %q", got)
		}
		h.closed()
	})
	t.Run("third syntax error: 421 and close", func(t *testing.T) {
		h := hardDial(t, e.smtp, "")
		h.reply()
		h.cmd("EHLO hardening.test", "250")
		h.cmd("FROB", "500 5.5.2 ")
		h.cmd("MAIL FROM:", "501 5.5.2 ")
		h.cmd("XYZZ plugh", "500 5.5.2 ")
		if got := h.reply(); !strings.HasPrefix(got, "421 4.7.0 ") {
			t.Fatalf("after three syntax errors: %q", got)
		}
		h.closed()
	})
	t.Run("HTTP request answered and closed", func(t *testing.T) {
		h := hardDial(t, e.smtp, "")
		h.reply()
		h.send("GET /metrics HTTP/1.1\r\nHost: relay\r\n\r\n")
		if got := h.reply(); !strings.HasPrefix(got, "500 5.5.1 ") || !strings.Contains(got, "HTTP") {
			t.Fatalf("HTTP request got %q", got)
		}
		h.closed()
	})
	t.Run("TLS ClientHello answered and closed", func(t *testing.T) {
		h := hardDial(t, e.smtp, "")
		h.reply()
		h.send("\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + strings.Repeat("\x00", 32))
		if got := h.reply(); !strings.HasPrefix(got, "500 5.5.1 ") || !strings.Contains(got, "STARTTLS") {
			t.Fatalf("ClientHello got %q", got)
		}
		h.closed()
	})
	t.Run("bare LF rejected", func(t *testing.T) {
		h := hardDial(t, e.smtp, "")
		h.start(to)
		h.send("Subject: smuggle\r\n\r\nhi\n.\nMAIL FROM:<evil@example.net>\r\n.\r\n")
		if got := h.reply(); !strings.HasPrefix(got, "550 5.6.0 ") || !strings.Contains(got, "line_endings") {
			t.Fatalf("bare LF got %q", got)
		}
		h.cmd("NOOP", "250")
	})
	t.Run("bare CR rejected", func(t *testing.T) {
		h := hardDial(t, e.smtp, "")
		h.start(to)
		h.send("Subject: cr\r\n\r\nhi\rthere\r\n.\r\n")
		if got := h.reply(); !strings.HasPrefix(got, "550 5.6.0 ") {
			t.Fatalf("bare CR got %q", got)
		}
	})
	t.Run("more than 50 Received: 554 5.4.6", func(t *testing.T) {
		h := hardDial(t, e.smtp, "")
		h.start(to)
		h.send(strings.Repeat("Received: from a by b; Tue, 1 Dec 2026 12:00:00 +0000\r\n", 51) + "Subject: loop\r\n\r\nx\r\n.\r\n")
		if got := h.reply(); !strings.HasPrefix(got, "554 5.4.6 ") {
			t.Fatalf("51 hops got %q", got)
		}
	})
	t.Run("malformed MAIL and RCPT: 501 with the reason", func(t *testing.T) {
		for _, tc := range []struct{ mail, rcpt, want string }{
			{"MAIL FROM:<" + relaytest.Mailbox, "", "501 5.5.2 "},
			{"MAIL FROM:<" + relaytest.Mailbox + "> SIZE=lots", "", "501 5.5.4 "},
			{"MAIL FROM:<" + relaytest.Mailbox + "> FROB=1", "", "501 5.5.4 "},
			{"MAIL FROM:<" + strings.Repeat("a", 260) + "@contoso.com>", "", "501 5.1.7 "},
			{"MAIL FROM:<" + relaytest.Mailbox + ">", "RCPT TO:<nobody>", "501 5.5.2 "},
			{"MAIL FROM:<" + relaytest.Mailbox + ">", "RCPT TO:<a\x01b@fabrikam.example>", "501 5.1.3 "},
		} {
			h := hardDial(t, e.smtp, "")
			h.reply()
			h.cmd("EHLO hardening.test", "250")
			line := tc.mail
			if tc.rcpt != "" {
				h.cmd(tc.mail, "250")
				line = tc.rcpt
			}
			got := h.cmd(line, tc.want)
			if reason := strings.TrimSpace(got[len(tc.want):]); len(reason) < 10 {
				t.Errorf("%q: %q gives no reason", line, got)
			}
		}
	})
	t.Run("SMTPUTF8 address only with SMTPUTF8", func(t *testing.T) {
		h := hardDial(t, e.smtp, "")
		h.reply()
		if ehlo := h.cmd("EHLO hardening.test", "250"); !strings.Contains(ehlo, "SMTPUTF8") {
			t.Fatalf("SMTPUTF8 not advertised: %q", ehlo)
		}
		h.cmd("MAIL FROM:<"+relaytest.Mailbox+">", "250")
		h.cmd("RCPT TO:<j\u00f6rg@fabrikam.example>", "553 5.6.7 ")
		h.cmd("RSET", "250")
		h.cmd("MAIL FROM:<"+relaytest.Mailbox+"> SMTPUTF8", "250")
		h.cmd("RCPT TO:<j\u00f6rg@fabrikam.example>", "250")
	})
	if n := len(e.cloud.Exchange.Messages()); n != 0 {
		t.Errorf("%d refused messages reached Exchange", n)
	}
}

// line_endings=normalize: a message with bare LF arrives at Exchange with
// CRLF; and with 500 idle connections open, a normal client still gets its
// 250 (the time is logged, not asserted:
// docs/design.md#speed-is-measured-not-asserted).
func TestHardeningNormalizeAnd500Idle(t *testing.T) {
	t.Parallel()
	e := startE2E(t, nil, "O365RELAY_LINE_ENDINGS=normalize", "O365RELAY_MAX_CONNECTIONS=1000")

	// One transaction (greeting to 250), the same before and with the
	// idle connections: the first is the baseline for the logged figure.
	transact := func(subject string) time.Duration {
		start := time.Now()
		h := hardDial(t, e.smtp, "")
		h.start("someone@fabrikam.example")
		// The end of data is CRLF . CRLF even when normalising: "\n.\r\n"
		// is not one (that is the smuggling trick), so the last line ends in CRLF.
		h.send("Subject: " + subject + "\n\nunix\nline\rendings\r\n.\r\n")
		if got := h.reply(); !strings.HasPrefix(got, "250 ") {
			t.Fatalf("%s: %q", subject, got)
		}
		elapsed := time.Since(start)
		h.cmd("QUIT", "221")
		return elapsed
	}
	baseline := transact("baseline")

	const idle = 500
	var wg sync.WaitGroup
	conns := make([]net.Conn, idle)
	errs := make(chan error, idle)
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", e.smtp, 10*time.Second)
			if err != nil {
				errs <- err
				return
			}
			conns[i] = c
			// Read the greeting: the connection is really being served.
			_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			if err == nil && !strings.HasPrefix(line, "220 ") {
				err = io.ErrUnexpectedEOF
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				_ = c.Close()
			}
		}
	})
	close(errs)
	for err := range errs {
		t.Fatalf("idle connection: %v", err)
	}

	withIdle := transact("normalised")
	t.Logf("greeting to 250: %v with %d idle connections open, %v before (baseline, same relay)", withIdle, idle, baseline)

	for _, m := range e.waitMessages(2) {
		got := string(stripReceived(t, m.Data))
		if got != "Subject: normalised\r\n\r\nunix\r\nline\r\nendings\r\n" && got != "Subject: baseline\r\n\r\nunix\r\nline\r\nendings\r\n" {
			t.Fatalf("normalised message at Exchange: %q", got)
		}
	}
}

// Connection caps (in total and per client address) and a client outside
// allowed_networks, using several loopback source addresses: 127.0.0.1 and
// 127.0.0.2 are allowed, 127.0.0.3 is not. (TestE2ERefusedNetwork covers a
// relay that allows no loopback client at all.)
func TestHardeningConnectionCapsAndNetworks(t *testing.T) {
	t.Parallel()
	e := startE2E(t, nil, "O365RELAY_ALLOWED_NETWORKS=127.0.0.1/32,127.0.0.2/32",
		"O365RELAY_MAX_CONNECTIONS=3", "O365RELAY_MAX_CONNECTIONS_PER_CLIENT=2")
	// No connection was made before (startE2E waits for the relay's
	// "listening" line, not by dialling), so every slot is free.
	a1, a2 := hardDial(t, e.smtp, "127.0.0.1"), hardDial(t, e.smtp, "127.0.0.1")
	for _, h := range []*hardConn{a1, a2} {
		if got := h.reply(); !strings.HasPrefix(got, "220 ") {
			t.Fatalf("within the caps: %q", got)
		}
	}
	a3 := hardDial(t, e.smtp, "127.0.0.1")
	if got := a3.reply(); !strings.HasPrefix(got, "421 4.7.0 ") {
		t.Fatalf("third from one client: %q, want 421 4.7.0", got)
	}
	a3.closed()
	b1 := hardDial(t, e.smtp, "127.0.0.2")
	if got := b1.reply(); !strings.HasPrefix(got, "220 ") {
		t.Fatalf("another client within the total cap: %q", got)
	}
	b2 := hardDial(t, e.smtp, "127.0.0.2")
	if got := b2.reply(); !strings.HasPrefix(got, "421 4.7.0 ") {
		t.Fatalf("fourth connection in total: %q, want 421 4.7.0", got)
	}
	b2.closed()
	// The connections that were let in are served normally.
	a1.cmd("EHLO hardening.test", "250")
	a1.cmd("NOOP", "250")

	c := hardDial(t, e.smtp, "127.0.0.3")
	if got := c.reply(); !strings.HasPrefix(got, "554 5.7.1 ") {
		t.Fatalf("client outside allowed_networks: %q, want 554 5.7.1", got)
	}
	c.closed()
	for _, f := range []fields{
		{"client": "127.0.0.1", "reason": "max_connections_per_client"},
		{"client": "127.0.0.2", "reason": "max_connections"},
		{"client": "127.0.0.3", "reason": "network"},
	} {
		f["msg"] = "connection refused"
		e.relay.waitLog("the refusal of "+f["client"].(string), f)
		if n := len(e.relay.logged(f)); n != 1 {
			t.Errorf("refusal %v logged %d times, want once", f, n)
		}
	}
}
