package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/o365relay/o365relay/config/waitfor"
	"github.com/o365relay/o365relay/relay/exchangetest"
	"github.com/o365relay/o365relay/relay/relaytest"
	"github.com/o365relay/o365relay/relay/status"
)

// deferral is one "deferred" log line of the relay.
type deferral struct {
	ID      string
	TS      time.Time
	Next    time.Time // next_attempt
	Attempt int
}

// deferrals are the relay's "deferred" lines so far, by message.
func deferrals(p *proc) map[string][]deferral {
	m := map[string][]deferral{}
	for _, e := range p.logged(fields{"msg": "deferred"}) {
		d := deferral{ID: e.str("id"), TS: e.time(p.t, "ts"), Next: e.time(p.t, "next_attempt"), Attempt: int(e.num("attempt"))}
		m[d.ID] = append(m[d.ID], d)
	}
	return m
}

func sendN(t *testing.T, addr string, n int, subject string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := 0; i < n; i++ {
		if _, err := sendOne(ctx, addr, relaytest.Mailbox, "x@fabrikam.example", testBody(relaytest.Mailbox, "x@fabrikam.example", subject)); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
}

// Exchange is unreachable, then answers 421 and 451: every message was
// acknowledged from the spool, nothing is delivered meanwhile, and none of
// it is the messages' fault. A failure before MAIL FROM is the path's, so
// the mailbox is held and probed by one message at a time along the
// doubling schedule (1 s, 2 s, 4 s, capped at 4 s here), no attempt is
// counted against a message, and everything goes out once Exchange is back.
func TestE2EExchangeOutage(t *testing.T) {
	t.Parallel()
	cloud := newCloud(t)
	cloud.Exchange.SetDown(true)
	e := startE2E(t, cloud, "O365RELAY_RETRY_MIN=1s", "O365RELAY_RETRY_MAX=4s")
	sendN(t, e.smtp, 3, "outage")

	// Let it probe a few times against a dead upstream. The first
	// attempts run at once, before any hold exists: one wave, which the
	// hold it starts covers; after that, one probe at a time.
	probes := func() (wave, ps []deferral) {
		var all []deferral
		for _, ds := range deferrals(e.relay) {
			all = append(all, ds...)
		}
		sort.Slice(all, func(i, j int) bool { return all[i].TS.Before(all[j].TS) })
		for _, d := range all {
			if len(ps) == 0 && (len(wave) == 0 || d.TS.Before(wave[0].Next)) {
				wave = append(wave, d)
			} else {
				ps = append(ps, d)
			}
		}
		return wave, ps
	}
	e.relay.waitUntil("three probes of the held mailbox", func() bool { _, ps := probes(); return len(ps) >= 3 })
	if n := len(cloud.Exchange.Messages()); n != 0 {
		t.Fatalf("%d messages delivered while Exchange was down", n)
	}
	if len(e.relay.logged(fields{"msg": "mailbox held: delivery paused", "cause": "connect"})) == 0 {
		t.Error("no hold with cause connect logged")
	}
	out, code := runTool(t, nil, binPath, "queue", "--spool-dir", e.spool, "list")
	if code != 0 || !strings.Contains(out, "3 message(s)") || !strings.Contains(out, "451 4.4.") {
		t.Errorf("queue list during the outage (exit %d):\n%s", code, out)
	}
	// The schedule: the wave holds the mailbox for retry_min, each failed
	// probe for the doubling backoff (no jitter: one probe at a time needs
	// none), from the end of the probe; the next probe starts when the
	// hold ends, plus a scheduling lag. No attempt is counted against a
	// message.
	const lag = 1500 * time.Millisecond
	wave, ps := probes()
	for _, d := range wave {
		if !d.Next.Equal(wave[0].Next) || d.Attempt != 0 {
			t.Errorf("the first attempts: %s held until %v (attempt %d), want one hold until %v", d.ID, d.Next, d.Attempt, wave[0].Next)
		}
	}
	if got := wave[0].Next.Sub(wave[0].TS); got > time.Second || got < time.Second*9/10 {
		t.Errorf("first hold %v, want 1 s", got)
	}
	prev, want := wave[0].Next, 2*time.Second
	for i, d := range ps[:3] {
		if d.Attempt != 0 {
			t.Errorf("probe %d counted as attempt %d of %s", i+1, d.Attempt, d.ID)
		}
		if got := d.Next.Sub(d.TS); got > want || got < want*9/10 {
			t.Errorf("probe %d: held for %v after it, want %v", i+1, got, want)
		}
		if gap := d.TS.Sub(prev); gap < -50*time.Millisecond || gap > lag {
			t.Errorf("probe %d started %v after the hold ended, want 0 to %v", i+1, gap, lag)
		}
		prev, want = d.Next, min(2*want, 4*time.Second)
	}

	// Back, but grumpy: two connections get 421 at the greeting, one MAIL 451.
	cloud.Exchange.Inject(exchangetest.Fault{Stage: exchangetest.StageConnect, Reply: &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Service not available"}, Times: 2})
	cloud.Exchange.Inject(exchangetest.Fault{Stage: exchangetest.StageMail, Reply: &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Temporary server error"}})
	cloud.Exchange.SetDown(false)
	e.waitMessages(3)
	checkUpstreamClean(t, cloud)
	e.relay.stop()
}

// Entra ID is down for longer than the held token lives: messages keep
// being accepted, wait in the spool once the token has expired, and are
// delivered when Entra answers again.
func TestE2EEntraOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out a 40 s token")
	}
	t.Parallel()
	cloud := newCloud(t)
	// 40 s: the token source hands out a token only while it has 30 s
	// left, so this one is usable for ~10 s after it is issued.
	cloud.Entra.SetLifetime(40 * time.Second)
	e := startE2E(t, cloud, "O365RELAY_RETRY_MIN=1s", "O365RELAY_RETRY_MAX=2s")
	e.relay.waitLog("the first token", fields{"msg": "token acquired"})
	cloud.Entra.SetOutage(503)
	sendN(t, e.smtp, 1, "held token")
	e.waitMessages(1) // the held token still works

	// Wait until the held token has expired (/status says so), then send
	// more: they wait in the spool. The relay stays ready throughout.
	waitStatus(t, e.admin, "the token expired", func(st status.Status) bool { return st.Token.State == status.TokenNone })
	if code := runCode(t, "healthcheck", "--admin-listen", e.admin); code != 0 {
		t.Errorf("healthcheck exit %d once the token expired, want 0: readiness never depends on Entra ID", code)
	}
	sendN(t, e.smtp, 2, "after expiry")
	e.relay.waitLog("a message held for want of a token", fields{"msg": "deferred", "upstream": "4.7.0"})
	if n := len(cloud.Exchange.Messages()); n != 1 {
		t.Fatalf("%d messages delivered without a valid token", n)
	}
	cloud.Entra.SetOutage(0)
	e.waitMessages(3)
	checkUpstreamClean(t, cloud)
	e.relay.stop()
}

func runCode(t *testing.T, args ...string) int {
	t.Helper()
	_, code := runTool(t, nil, binPath, args...)
	return code
}

// A restart with damaged spool files: a bit-flipped and a truncated record
// go to corrupt/ (kept, not deleted), the intact one is delivered.
func TestE2ERestartWithCorruptSpool(t *testing.T) {
	t.Parallel()
	cloud := newCloud(t)
	cloud.Exchange.SetDown(true)
	e := startE2E(t, cloud, "O365RELAY_RETRY_MIN=1s", "O365RELAY_RETRY_MAX=2s")
	sendN(t, e.smtp, 3, "restart")
	e.relay.stop()

	msgs, err := filepath.Glob(filepath.Join(e.spool, "queue", "*.msg"))
	if err != nil || len(msgs) != 3 {
		t.Fatalf("queue holds %v (%v), want 3 records", msgs, err)
	}
	b, err := os.ReadFile(msgs[0])
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x20
	if err := os.WriteFile(msgs[0], b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(msgs[1], 100); err != nil {
		t.Fatal(err)
	}

	cloud.Exchange.SetDown(false)
	p := startRelay(t, e.env, e.smtp, "serve")
	e.relay = p
	got := e.waitMessages(1)
	// Settled: nothing is left in the queue to deliver (the damaged
	// records are in corrupt/, the intact one is delivered and removed).
	waitStatus(t, e.admin, "an empty queue", func(st status.Status) bool { return st.Queue.Messages == 0 })
	if n := len(cloud.Exchange.Messages()); n != 1 {
		t.Errorf("%d messages delivered, want only the intact one", n)
	}
	if !bytes.Contains(got[0].Data, []byte("Subject: restart")) {
		t.Errorf("unexpected message delivered")
	}
	corrupt, err := os.ReadDir(filepath.Join(e.spool, "corrupt"))
	if err != nil {
		t.Fatal(err)
	}
	names := 0
	for _, c := range corrupt {
		if strings.HasSuffix(c.Name(), ".msg") {
			names++
		}
	}
	if names != 2 {
		t.Errorf("corrupt/ holds %d records, want 2: %v", names, corrupt)
	}
	p.stop()
}

// ack=upstream: the client waits for Exchange. A permanent refusal (the
// From: header is an address the mailbox may not send as: 554 5.2.252
// SendAsDenied after DATA) goes back to the client and nothing is kept; a
// transient failure is acknowledged from the spool and delivered later.
func TestE2EAckUpstream(t *testing.T) {
	t.Parallel()
	cloud := newCloud(t)
	e := startE2E(t, cloud, "O365RELAY_ACK=upstream", "O365RELAY_RETRY_MIN=1s", "O365RELAY_RETRY_MAX=2s")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	text, err := sendOne(ctx, e.smtp, relaytest.Mailbox, "x@fabrikam.example", testBody(relaytest.Mailbox, "x@fabrikam.example", "upstream ok"))
	if err != nil || !strings.Contains(text, "delivered") {
		t.Fatalf("delivered message: %q, %v", text, err)
	}
	if n := len(cloud.Exchange.Messages()); n != 1 {
		t.Fatalf("250 before Exchange had it: %d messages", n)
	}

	_, err = sendOne(ctx, e.smtp, relaytest.Mailbox, "x@fabrikam.example", testBody("ceo@contoso.example", "x@fabrikam.example", "spoofed"))
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 554 || se.EnhancedCode != (smtp.EnhancedCode{5, 2, 252}) {
		t.Fatalf("SendAs-denied message: %v, want Exchange's 554 5.2.252", err)
	}
	if out, _ := runTool(t, nil, binPath, "queue", "--spool-dir", e.spool, "list"); !strings.Contains(out, "0 message(s)") {
		t.Errorf("refused message kept in the queue:\n%s", out)
	}
	if out, _ := runTool(t, nil, binPath, "queue", "--spool-dir", e.spool, "failed"); !strings.Contains(out, "0 message(s)") {
		t.Errorf("refused message (the client was told) kept in failed/:\n%s", out)
	}

	cloud.Exchange.Inject(exchangetest.Fault{Stage: exchangetest.StageDot, Reply: &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Temporary server error"}})
	text, err = sendOne(ctx, e.smtp, relaytest.Mailbox, "x@fabrikam.example", testBody(relaytest.Mailbox, "x@fabrikam.example", "deferred"))
	if err != nil || !strings.Contains(text, "queued") {
		t.Fatalf("transiently refused message: %q, %v; want 250 queued", text, err)
	}
	e.waitMessages(2)
	checkUpstreamClean(t, cloud)
	e.relay.stop()
}

// SIGTERM drains: a session inside DATA holds the shutdown (it has no 250
// yet) until shutdown_timeout, and is served to its end; a second SIGTERM
// ends the process at once. Nothing acknowledged is at stake: the
// half-sent message never got a 250, the finished one is on disk or at
// Exchange.
func TestE2ESecondSignalExitsAtOnce(t *testing.T) {
	t.Parallel()
	e := startE2E(t, nil, "O365RELAY_SHUTDOWN_TIMEOUT=10m")
	// Two sessions in DATA: the first finishes during the drain, the
	// second keeps the relay draining until the second signal.
	finished, half := inData(t, e.smtp, "finished"), inData(t, e.smtp, "half")

	if err := e.relay.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	e.relay.waitLog("the drain", fields{"msg": "shutting down", "timeout": 600}) // shutdown_timeout in seconds
	// The relay is still serving the sessions it waits for: the first
	// one's message is taken. (Had the relay not waited, the connection
	// would be closed and this would fail.)
	finished.cmd("\r\n.", "250")
	if err := e.relay.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := waitfor.Recv(t, e.relay.done, "the process to end at the second SIGTERM")
	e.relay.done <- err
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
		t.Errorf("after the second SIGTERM: %v, want death by SIGTERM", err)
	}
	_ = half.c.Close()
	// What got its 250 is safe; the half-sent message is nowhere.
	var subjects []string
	for _, m := range e.cloud.Exchange.Messages() {
		subjects = append(subjects, string(m.Data))
	}
	out, code := runTool(t, nil, binPath, "queue", "--spool-dir", e.spool, "list")
	if code != 0 {
		t.Fatalf("queue list after the exit: %d\n%s", code, out)
	}
	atExchange := strings.Contains(strings.Join(subjects, ""), "Subject: finished")
	if spooled := strings.Contains(out, "1 message(s)"); atExchange == spooled {
		t.Errorf("the message that got its 250 is at Exchange: %v, in the spool: %v\n%s", atExchange, spooled, out)
	}
	if strings.Contains(strings.Join(subjects, ""), "Subject: half") {
		t.Error("the half-sent message, which never got a 250, was delivered")
	}
}

// inData opens a session and leaves it inside DATA, a header and part of
// the body sent.
func inData(t *testing.T, addr, subject string) *hardConn {
	t.Helper()
	h := hardDial(t, addr, "")
	h.start("x@fabrikam.example")
	h.send("Subject: " + subject + "\r\n\r\nstill typing")
	return h
}
