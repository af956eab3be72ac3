package smtpd

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest/observer"

	"github.com/o365relay/o365relay/config/waitfor"
)

// The intake's protections live in trackedConn, below go-smtp. These tests
// run the same protections over plain SMTP, STARTTLS and implicit TLS, so
// a protection that only works on plaintext bytes would fail here.

type connMode string

const (
	modePlain    connMode = "plain"
	modeSTARTTLS connMode = "starttls"
	modeImplicit connMode = "implicit"
)

var allModes = []connMode{modePlain, modeSTARTTLS, modeImplicit}

// startTLSServer runs a server with STARTTLS on Addr and implicit TLS on a
// second port, AUTH available, SIZE 1000.
func startTLSServer(t *testing.T, mod func(*Options)) (*Server, *recordSink, *observer.ObservedLogs, *tlsFixture) {
	t.Helper()
	fx := newTLSFixture(t)
	s, sink, logs := startServer(t, func(o *Options) {
		o.TLSConfig = fx.cert.Load
		o.ImplicitTLSAddr = "127.0.0.1:0"
		o.Auth = fakeAuth{}
		o.AuthFailureDelay = 150 * time.Millisecond
		o.MaxMessageBytes = 1000
		if mod != nil {
			mod(o)
		}
	})
	return s, sink, logs, fx
}

// dialMode connects in mode. Over STARTTLS the client greets, asks for TLS
// and handshakes; the reader then starts with a stand-in greeting so that
// every test reads "220" first whatever the mode.
func dialMode(t *testing.T, s *Server, fx *tlsFixture, mode connMode) *client {
	t.Helper()
	switch mode {
	case modeImplicit:
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", s.ImplicitTLSAddr().String(), fx.client(fx.ca))
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
		t.Cleanup(func() { _ = conn.Close() })
		return &client{t: t, c: conn, r: bufio.NewReader(conn)}
	case modeSTARTTLS:
		c := dial(t, s.Addr().String())
		c.reply()
		if caps := c.ehlo("EHLO app"); !strings.Contains(caps, "|STARTTLS|") || strings.Contains(caps, "AUTH") {
			t.Fatalf("before TLS: EHLO %q, want STARTTLS and no AUTH", caps)
		}
		c.cmd("STARTTLS", "220 2.0.0 ")
		tc := tls.Client(c.c, fx.client(fx.ca))
		if err := tc.Handshake(); err != nil {
			t.Fatalf("handshake after STARTTLS: %v", err)
		}
		return &client{t: t, c: tc, r: bufio.NewReader(io.MultiReader(strings.NewReader("220 (TLS on)\r\n"), tc))}
	}
	return dial(t, s.Addr().String())
}

// ehlo sends line and returns the capabilities joined by "|", with a "|"
// at each end.
func (c *client) ehlo(line string) string {
	c.t.Helper()
	c.send(line + "\r\n")
	caps := []string{""}
	for {
		l, err := c.r.ReadString('\n')
		if err != nil || len(l) < 4 {
			c.t.Fatalf("EHLO reply: %q %v", l, err)
		}
		if !strings.HasPrefix(l, "250") {
			c.t.Fatalf("EHLO answered %q", l)
		}
		caps = append(caps, strings.TrimSpace(l[4:]))
		if l[3] == ' ' {
			break
		}
	}
	return strings.Join(append(caps, ""), "|")
}

func TestProtectionsAreTheSameOverTLS(t *testing.T) {
	t.Parallel()
	s, sink, _, fx := startTLSServer(t, func(o *Options) { o.DataTimeout = 30 * time.Second })
	for _, mode := range allModes {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			t.Run("EHLO: exact SIZE, no CHUNKING, STARTTLS only before TLS, AUTH only over TLS", func(t *testing.T) {
				t.Parallel()
				c := dialMode(t, s, fx, mode)
				c.reply()
				caps := c.ehlo("EHLO app")
				if !strings.Contains(caps, "|SIZE 1000|") || strings.Contains(caps, "CHUNKING") {
					t.Fatalf("EHLO %q: want SIZE 1000 and no CHUNKING", caps)
				}
				if got := strings.Contains(caps, "|STARTTLS|"); got != (mode == modePlain) {
					t.Fatalf("EHLO %q: STARTTLS offered %v", caps, got)
				}
				if got := strings.Contains(caps, "|AUTH PLAIN LOGIN|"); got != (mode != modePlain) {
					t.Fatalf("EHLO %q: AUTH offered %v", caps, got)
				}
			})
			t.Run("BDAT refused, session goes on", func(t *testing.T) {
				t.Parallel()
				c := dialMode(t, s, fx, mode)
				c.reply()
				c.cmd("EHLO app", "250")
				c.cmd("MAIL FROM:<app@contoso.com>", "250")
				c.cmd("RCPT TO:<a@example.org>", "250")
				// The chunk holds a command line: it is data, never
				// acted on.
				c.send("BDAT 22 LAST\r\nSTARTTLS\r\nQUIT\r\nbody\r\n")
				if got := c.reply(); !strings.HasPrefix(got, "502 5.5.1 ") {
					t.Fatalf("BDAT got %q", got)
				}
				c.cmd("NOOP", "250")
			})
			t.Run("SIZE: over the limit 552, exactly the limit 250", func(t *testing.T) {
				t.Parallel()
				c := dialMode(t, s, fx, mode)
				c.reply()
				c.cmd("EHLO app", "250")
				c.cmd("MAIL FROM:<app@contoso.com> SIZE=1001", "552 5.3.4 ")
				c.cmd("MAIL FROM:<app@contoso.com> SIZE=10", "250")
				c.cmd("RCPT TO:<a@example.org>", "250")
				c.cmd("DATA", "354")
				c.send("Subject: big\r\n\r\n" + strings.Repeat("0123456789012345678901234567890123456789\r\n", 40) + ".\r\n")
				if got := c.reply(); !strings.HasPrefix(got, "552 5.3.4 ") {
					t.Fatalf("oversized body got %q", got)
				}
				exact := "Subject: " + string(mode) + "\r\n\r\n"
				exact += strings.Repeat("e", 1000-len(exact)-2) + "\r\n"
				c.cmd("MAIL FROM:<app@contoso.com> SIZE=1000", "250")
				c.cmd("RCPT TO:<a@example.org>", "250")
				c.cmd("DATA", "354")
				c.send(exact + ".\r\n")
				if got := c.reply(); !strings.HasPrefix(got, "250 ") {
					t.Fatalf("a body of exactly the limit got %q", got)
				}
			})
			t.Run("third syntax error answered, then 421 and close", func(t *testing.T) {
				t.Parallel()
				c := dialMode(t, s, fx, mode)
				c.reply()
				c.cmd("EHLO x", "250")
				c.cmd("RCPT TO:<a@example.org>", "502 5.5.1 ")
				c.cmd("BOGUS", "501 5.5.2 ")
				c.cmd("MAIL FROM:<<>>", "501 5.5.2 ")
				c.cmd("MAIL FROM:<app@contoso.com> NOSUCH=1", "501 5.5.4 ")
				if got := c.reply(); got != "421 4.7.0 Too many errors, closing connection" {
					t.Fatalf("got %q", got)
				}
				c.expectClosed()
			})
			t.Run("CR CR LF before the end of data is answered at once", func(t *testing.T) {
				t.Parallel()
				c := dialMode(t, s, fx, mode)
				// Without the repair the reply comes only at the DATA
				// timeout (30 s here), past this deadline.
				_ = c.c.SetDeadline(time.Now().Add(10 * time.Second))
				got := c.transaction("EHLO app", "app@contoso.com", []string{"a@example.org"}, "Subject: x\r\r\n\r\r\nbody\r\r\n.\r\n")
				if !strings.HasPrefix(got, "550 5.6.0 ") {
					t.Fatalf("got %q", got)
				}
				c.cmd("NOOP", "250")
			})
			t.Run("a message is accepted and says how it came", func(t *testing.T) {
				t.Parallel()
				c := dialMode(t, s, fx, mode)
				marker := "Subject: mode " + string(mode)
				got := c.transaction("EHLO app-"+string(mode), "app@contoso.com", []string{"a@example.org"}, marker+"\r\n\r\nhi\r\n.\r\n")
				if !strings.HasPrefix(got, "250 2.0.0 ") {
					t.Fatalf("got %q", got)
				}
				data := sink.find(t, marker)
				want := "from app-" + string(mode) + " ([127.0.0.1])"
				proto := " with ESMTPS id "
				if mode == modePlain {
					proto = " with ESMTP id "
				}
				if !strings.Contains(data, want) || !strings.Contains(data, proto) {
					t.Fatalf("Received: %q, want %q and %q", data, want, proto)
				}
			})
		})
	}
}

// find returns the stored message containing s.
func (k *recordSink) find(t *testing.T, s string) string {
	t.Helper()
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, d := range k.data {
		if strings.Contains(string(d), s) {
			return string(d)
		}
	}
	t.Fatalf("no stored message contains %q", s)
	return ""
}

// RFC 3207 §4.2 and CVE-2011-0411: what a client (or a man in the middle)
// sends after STARTTLS before the handshake is never executed, and the
// session starts over after it.
func TestSTARTTLSDiscardsWhatCameBefore(t *testing.T) {
	t.Parallel()
	s, sink, logs, fx := startTLSServer(t, nil)
	c := dial(t, s.Addr().String())
	c.reply()
	c.cmd("EHLO before-tls", "250")
	c.cmd("MAIL FROM:<app@contoso.com>", "250")
	c.cmd("RCPT TO:<kept@example.org>", "250")
	// One write: STARTTLS and an injected transaction in one segment.
	c.send("STARTTLS\r\nMAIL FROM:<evil@contoso.com>\r\nRCPT TO:<evil@example.org>\r\nDATA\r\nSubject: injected\r\n\r\nx\r\n.\r\n")
	if got := c.reply(); !strings.HasPrefix(got, "220 2.0.0 ") {
		t.Fatalf("STARTTLS got %q", got)
	}
	tc := tls.Client(c.c, fx.client(fx.ca))
	if err := tc.Handshake(); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	tr := &client{t: t, c: tc, r: bufio.NewReader(tc)}
	// Before a fresh EHLO, nothing but EHLO/HELO/NOOP/RSET/QUIT.
	tr.cmd("MAIL FROM:<app@contoso.com>", "503 5.5.1 ")
	tr.cmd("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00alice\x00correct horse")), "503 5.5.1 ")
	tr.cmd("NOOP", "250")
	if caps := tr.ehlo("EHLO after-tls"); strings.Contains(caps, "STARTTLS") || !strings.Contains(caps, "|AUTH PLAIN LOGIN|") {
		t.Fatalf("EHLO after TLS %q", caps)
	}
	// The transaction begun before TLS is gone, and so is the injected
	// one: RCPT has no MAIL to belong to.
	tr.cmd("RCPT TO:<a@example.org>", "502 5.5.1 ")
	tr.cmd("STARTTLS", "502 5.5.1 TLS is already on")
	tr.cmd("MAIL FROM:<app@contoso.com>", "250")
	tr.cmd("RCPT TO:<a@example.org>", "250")
	tr.cmd("DATA", "354")
	tr.send("Subject: after\r\n\r\nx\r\n.\r\n")
	if got := tr.reply(); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("got %q", got)
	}
	env, data := sink.last(t)
	if len(sink.envs) != 1 || len(env.To) != 1 || env.To[0] != "a@example.org" || env.Helo != "after-tls" ||
		!strings.Contains(string(data), "Subject: after") {
		t.Fatalf("stored %d messages; last %+v %q", len(sink.envs), env, data)
	}
	if logs.FilterMessageSnippet("discarded what the client sent after STARTTLS").Len() != 1 {
		t.Fatal("the discarded bytes were not logged")
	}
}

func TestSTARTTLSRefusals(t *testing.T) {
	t.Parallel()
	s, _, logs, _ := startTLSServer(t, func(o *Options) { o.CommandTimeout = 2 * time.Second })
	c := dial(t, s.Addr().String())
	c.reply()
	c.cmd("EHLO app", "250")
	// AUTH before TLS: not offered, and refused unchecked.
	c.cmd("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00alice\x00correct horse")), "530 5.7.0 Must issue a STARTTLS")
	c.cmd("STARTTLS now", "501 5.5.4 ")
	// A client that answers 220 with something other than a ClientHello
	// is closed, and its slot given back.
	c.cmd("STARTTLS", "220 ")
	c.send("EHLO not-tls\r\n")
	c.expectClosed()
	waitfor.Check(t, "the refused handshake's slot given back", func() error {
		if n := s.OpenConnections(); n != 0 {
			return fmt.Errorf("%d connections still counted", n)
		}
		return nil
	})
	if logs.FilterMessageSnippet("TLS handshake failed").Len() == 0 {
		t.Fatal("failed handshake not logged")
	}
	// A plain-text client on the implicit-TLS port: closed once the
	// handshake deadline passes.
	p := dial(t, s.ImplicitTLSAddr().String())
	p.send("EHLO plain\r\n")
	p.expectClosed()
}

func TestAuthOverBothTLSModes(t *testing.T) {
	t.Parallel()
	for _, mode := range []connMode{modeSTARTTLS, modeImplicit} {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			// Nobody may relay without AUTH here.
			s, sink, logs, fx := startTLSServer(t, func(o *Options) { o.AllowedNetworks = nil; o.MaxAuthFailures = 2 })
			c := dialMode(t, s, fx, mode)
			c.reply()
			c.cmd("EHLO app", "250")
			c.cmd("MAIL FROM:<alice@contoso.com>", "530 5.7.0 Authentication required")
			var took []time.Duration
			for _, cred := range []string{"\x00mallory\x00correct horse", "\x00alice\x00hunter2-guess"} {
				start := time.Now()
				c.cmd("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte(cred)), "535 5.7.8 ")
				took = append(took, time.Since(start))
			}
			start := time.Now()
			c.cmd("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00alice\x00correct horse")), "454 4.7.0 ")
			took = append(took, time.Since(start))
			t.Logf("unknown user %v, wrong password %v, over the limit %v (floor 150ms)", took[0], took[1], took[2])
			for _, d := range took {
				if d < 150*time.Millisecond {
					t.Fatalf("a failure answered in %v, under the padding floor", d)
				}
			}
			// Another address is not limited by this one's failures;
			// here the limiter is reset by a fresh server instead.
			s2, sink2, _, fx2 := startTLSServer(t, func(o *Options) { o.AllowedNetworks = nil })
			c2 := dialMode(t, s2, fx2, mode)
			c2.reply()
			c2.cmd("EHLO app", "250")
			c2.cmd("AUTH LOGIN", "334 "+base64.StdEncoding.EncodeToString([]byte("Username:")))
			c2.cmd(base64.StdEncoding.EncodeToString([]byte("bob")), "334 "+base64.StdEncoding.EncodeToString([]byte("Password:")))
			c2.cmd(base64.StdEncoding.EncodeToString([]byte("battery staple")), "235 2.7.0 ")
			c2.cmd("MAIL FROM:<alice@contoso.com>", "550 5.7.1 ")
			c2.cmd("MAIL FROM:<bob@contoso.com>", "250")
			c2.cmd("RCPT TO:<a@example.org>", "250")
			c2.cmd("DATA", "354")
			c2.send("Subject: authed\r\n\r\nx\r\n.\r\n")
			if got := c2.reply(); !strings.HasPrefix(got, "250 ") {
				t.Fatalf("got %q", got)
			}
			if data := sink2.find(t, "Subject: authed"); !strings.Contains(data, " with ESMTPSA id ") {
				t.Fatalf("Received: %q", data)
			}
			if len(sink.envs) != 0 {
				t.Fatal("an unauthenticated client's message was stored")
			}
			// Neither the password nor the AUTH payload is logged.
			text := logText(logs)
			for _, secret := range []string{"correct horse", "hunter2-guess", base64.StdEncoding.EncodeToString([]byte("\x00alice\x00correct horse"))} {
				if strings.Contains(text, secret) {
					t.Fatalf("log contains %q:\n%s", secret, text)
				}
			}
		})
	}
}

// Without Auth, an address outside allowed_networks is refused at connect
// even when TLS is on; with Auth it may connect but must authenticate.
func TestUntrustedClientNeedsAuth(t *testing.T) {
	t.Parallel()
	other := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	s, _, _, _ := startTLSServer(t, func(o *Options) { o.AllowedNetworks = other; o.Auth = nil })
	c := dial(t, s.Addr().String())
	if got := c.reply(); !strings.HasPrefix(got, "554 5.7.1 ") {
		t.Fatalf("got %q", got)
	}
	s2, _, _, _ := startTLSServer(t, func(o *Options) { o.AllowedNetworks = other })
	c2 := dial(t, s2.Addr().String())
	c2.reply()
	c2.cmd("EHLO app", "250")
	c2.cmd("MAIL FROM:<app@contoso.com>", "530 5.7.0 ")
}
