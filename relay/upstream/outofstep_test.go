package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/o365relay/o365relay/config/tlstest"
	"github.com/o365relay/o365relay/relay/reply"
)

// A scripted server for what the strict fake of Exchange never does: send
// replies out of step, or bytes after its STARTTLS reply. answer gives the
// reply to each command after TLS in the session-th session ("" for the
// ordinary one); end gives the reply to each end of data (n counts them
// from 1 in the session), written in one write.
type scripted struct {
	pipelining  bool
	afterTLS220 string // sent in the same write as "220" to STARTTLS
	answer      func(session int, cmd string) string
	end         func(session, n int) string

	mu       sync.Mutex
	seen     []string // commands, with "TLS" where the handshake happened
	sessions int
}

func (s *scripted) sessionCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions
}

func (s *scripted) note(cmd string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen = append(s.seen, cmd)
}

func (s *scripted) commands() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.seen...)
}

func (s *scripted) start(t *testing.T) *Client {
	t.Helper()
	ca, err := tlstest.NewCA("out-of-step test CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.ServerCert()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		if err := ln.Close(); err != nil {
			t.Error(err)
		}
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.serve(c, cert)
			}()
		}
	}()
	c, err := New(Options{Addr: ln.Addr().String(), ServerName: "localhost", RootCAs: ca.Pool(),
		Tokens: newStubTokens(t, 0, nil), HelloName: "relay.test",
		ConnectTimeout: 10 * time.Second, CommandTimeout: 10 * time.Second, DataTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	return c
}

func (s *scripted) serve(raw net.Conn, cert tls.Certificate) {
	defer func() { _ = raw.Close() }()
	_ = raw.SetDeadline(time.Now().Add(time.Minute))
	s.mu.Lock()
	s.sessions++
	session := s.sessions
	s.mu.Unlock()
	ends := 0
	var c io.ReadWriter = raw
	r := bufio.NewReader(c)
	say := func(text string) bool { _, err := io.WriteString(c, text); return err == nil }
	if !say("220 scripted ESMTP\r\n") {
		return
	}
	ext := "250-scripted\r\n250 STARTTLS\r\n"
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		cmd := strings.TrimRight(line, "\r\n")
		s.note(cmd)
		verb := strings.ToUpper(strings.SplitN(cmd, " ", 2)[0])
		reply := ""
		switch verb {
		case "EHLO":
			reply = ext
		case "STARTTLS":
			if !say("220 2.0.0 go ahead\r\n" + s.afterTLS220) {
				return
			}
			tc := tls.Server(raw, &tls.Config{Certificates: []tls.Certificate{cert}})
			if tc.Handshake() != nil {
				return
			}
			s.note("TLS")
			c, r = tc, bufio.NewReader(tc)
			ext = "250-scripted\r\n250-8BITMIME\r\n"
			if s.pipelining {
				ext += "250-PIPELINING\r\n"
			}
			ext += "250 AUTH XOAUTH2\r\n"
			continue
		case "AUTH":
			reply = "235 2.7.0 Authentication successful\r\n"
		case "QUIT":
			say("221 2.0.0 bye\r\n")
			return
		default:
			if s.answer != nil {
				reply = s.answer(session, cmd)
			}
			if reply == "" {
				reply = "250 2.0.0 OK\r\n"
				if verb == "DATA" {
					reply = "354 Start mail input; end with <CRLF>.<CRLF>\r\n"
				}
			}
		}
		if !say(reply) {
			return
		}
		if verb == "DATA" && strings.HasPrefix(reply, "354") {
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" {
					break
				}
			}
			ends++
			end := "250 2.6.0 Queued mail for delivery\r\n"
			if s.end != nil {
				if e := s.end(session, ends); e != "" {
					end = e
				}
			}
			if !say(end) {
				return
			}
		}
	}
}

// TestReplyTooManyRetiresTheSession: a server that answers one end of data
// twice is out of step; the relay must not read that extra reply as the
// next transaction's (it would give RCPT 1's verdict to recipient 2 and
// fail the message on a "250"). The session is retired, the next message
// goes out on a new one with each reply where it belongs.
func TestReplyTooManyRetiresTheSession(t *testing.T) {
	for _, pipelining := range []bool{true, false} {
		s := &scripted{pipelining: pipelining,
			answer: func(_ int, cmd string) string {
				if strings.Contains(cmd, "<bad@") {
					return "550 5.1.10 RESOLVER.ADR.RecipientNotFound; not found\r\n"
				}
				return ""
			},
			end: func(session, n int) string {
				if session == 1 && n == 1 {
					return "250 2.6.0 Queued mail for delivery\r\n250 2.0.0 stray\r\n"
				}
				return ""
			}}
		c := s.start(t)
		if _, err := c.Deliver(ctxT(t), testEnv(), strings.NewReader(simpleBody)); err != nil {
			t.Fatalf("pipelining %v: first message: %v", pipelining, err)
		}
		res, err := c.Deliver(ctxT(t), testEnv("bad@example.test", "good@example.test"), strings.NewReader(simpleBody))
		if err != nil {
			t.Fatalf("pipelining %v: second message: %v", pipelining, err)
		}
		if len(res.Accepted) != 1 || res.Accepted[0] != "good@example.test" || res.Rejected["bad@example.test"] == nil ||
			res.Rejected["bad@example.test"].Code != 550 {
			t.Errorf("pipelining %v: accepted %v, rejected %v; want good accepted, bad refused 550", pipelining, res.Accepted, res.Rejected)
		}
		if pipelining && s.sessionCount() != 2 {
			// go-smtp's one-at-a-time client cannot see the extra reply;
			// only the pipelined path checks for it.
			t.Errorf("%d sessions, want 2 (the out-of-step one retired)", s.sessionCount())
		}
	}
}

// TestPositiveReplyOutOfStepIsTemporary: a 2xx or 3xx where another reply
// was expected, at any step of the transaction, is the session's fault,
// never the message's: 451 4.5.0, temporary, and the next message goes
// out on a new session.
func TestPositiveReplyOutOfStepIsTemporary(t *testing.T) {
	cases := []struct {
		name   string
		answer func(int, string) string
		end    func(int, int) string
	}{
		{"MAIL answered 220", func(session int, cmd string) string {
			if session == 1 && strings.HasPrefix(cmd, "MAIL") {
				return "220 2.0.0 hello again\r\n"
			}
			return ""
		}, nil},
		{"RCPT answered 354", func(session int, cmd string) string {
			if session == 1 && strings.HasPrefix(cmd, "RCPT") {
				return "354 go ahead\r\n"
			}
			return ""
		}, nil},
		{"DATA answered 250", func(session int, cmd string) string {
			if session == 1 && cmd == "DATA" {
				return "250 2.0.0 OK\r\n"
			}
			return ""
		}, nil},
		{"end of data answered 354", nil, func(session, n int) string {
			if session == 1 && n == 1 {
				return "354 more please\r\n"
			}
			return ""
		}},
		{"end of data answered 220", nil, func(session, n int) string {
			if session == 1 && n == 1 {
				return "220 2.0.0 ready\r\n"
			}
			return ""
		}},
	}
	for _, tc := range cases {
		for _, pipelining := range []bool{true, false} {
			s := &scripted{pipelining: pipelining, answer: tc.answer, end: tc.end}
			c := s.start(t)
			_, err := c.Deliver(ctxT(t), testEnv(), strings.NewReader(simpleBody))
			var re *reply.Error
			if !errors.As(err, &re) || re.Code != 451 || re.Enhanced != (reply.EnhancedCode{4, 5, 0}) || !re.Temporary() {
				t.Errorf("%s, pipelining %v: %v, want 451 4.5.0, temporary", tc.name, pipelining, err)
				continue
			}
			if _, err := c.Deliver(ctxT(t), testEnv(), strings.NewReader(simpleBody)); err != nil {
				t.Errorf("%s, pipelining %v: the next message: %v", tc.name, pipelining, err)
			}
			if n := s.sessionCount(); n != 2 {
				t.Errorf("%s, pipelining %v: %d sessions, want 2 (the out-of-step one retired)", tc.name, pipelining, n)
			}
		}
	}
}

// TestSTARTTLSReplyInjection: bytes a server (or a man in the middle)
// sends after its "220" to STARTTLS and before the handshake are plaintext
// and are discarded (RFC 3207 §4.2): capabilities come from the EHLO sent
// again over TLS, so the injected "AUTH PLAIN" is never seen.
func TestSTARTTLSReplyInjection(t *testing.T) {
	s := &scripted{pipelining: true, afterTLS220: "250-injected\r\n250 AUTH PLAIN\r\n"}
	c := s.start(t)
	if _, err := c.Deliver(ctxT(t), testEnv(), strings.NewReader(simpleBody)); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(s.commands(), "\n")
	if !strings.Contains(got, "TLS\nEHLO relay.test\nAUTH XOAUTH2") {
		t.Errorf("after the handshake the relay sent:\n%s\nwant EHLO again, then AUTH XOAUTH2", got)
	}
}

// deadlineConn records, in order, the deadlines set on a connection and
// its writes and reads.
type deadlineConn struct {
	net.Conn
	mu     *sync.Mutex
	events *[]string
}

func (c deadlineConn) log(e string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	*c.events = append(*c.events, e)
}

func (c deadlineConn) Write(p []byte) (int, error) { c.log("write"); return c.Conn.Write(p) }
func (c deadlineConn) Read(p []byte) (int, error)  { c.log("read"); return c.Conn.Read(p) }
func (c deadlineConn) SetDeadline(t time.Time) error {
	if !t.IsZero() {
		c.log("deadline")
	}
	return c.Conn.SetDeadline(t)
}

// TestFinalReplyHasItsOwnDeadline: the wait for Exchange's verdict after
// the end of data starts a deadline of its own, as go-smtp's Close does;
// sharing the body's would turn a slow 250 after a slow upload into a
// timeout, a retry and a second copy of an accepted message.
func TestFinalReplyHasItsOwnDeadline(t *testing.T) {
	var mu sync.Mutex
	var events []string
	e := newEnv(t, setup{client: func(o *Options) {
		o.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return deadlineConn{Conn: c, mu: &mu, events: &events}, nil
		}
	}})
	if _, err := e.client.Deliver(ctxT(t), testEnv(), strings.NewReader(simpleBody)); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	last := -1
	for i, ev := range events {
		if ev == "write" {
			last = i // the body with its end of data: nothing is written after it
		}
	}
	if last < 0 || last+1 >= len(events) || events[last+1] != "deadline" {
		t.Errorf("after the end of data: %v, want a new deadline before the reply is read", events[max(last, 0):])
	}
}
