package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/o365relay/o365relay/relay/exchangetest"
)

// TestSmallRun runs the tool end to end as its default mode does (relay
// built and run as a child process between the in-process fakes) with 50
// messages from 2 clients, and checks what the report must show — not how
// fast anything was (docs/design.md#speed-is-measured-not-asserted).
func TestSmallRun(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds and runs the relay")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfg := config{Clients: 2, Messages: 50, Size: 2 << 10, Idle: 3, Duration: 2 * time.Minute,
		Dir: t.TempDir(), Fsyncs: 20, Ack: "spool", LogLevel: "warn"}
	if err := cfg.check(); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	rep, err := run(ctx, cfg, &stderr)
	var out bytes.Buffer
	if rep != nil {
		rep.print(&out)
	}
	if err != nil {
		t.Fatalf("run: %v\n%s\n%s", err, stderr.String(), out.String())
	}
	t.Logf("\n%s", out.String())
	if n := rep.acked(); n != 50 {
		t.Errorf("acknowledged %d of 50", n)
	}
	if len(rep.delivered) != 50 || rep.unmatched != 0 {
		t.Errorf("delivered %d of 50 (%d unmatched)", len(rep.delivered), rep.unmatched)
	}
	if rep.idleOpen != 3 {
		t.Errorf("idle connections open: %d of 3 (%v)", rep.idleOpen, rep.idleErrors)
	}
	// Steady state (docs/design.md#no-token-request-on-the-message-path):
	// the warm-up got the token and opened the pool; the message path must
	// not ask Entra ID again, and may open at most the pool's three
	// connections.
	if d := rep.tokens1 - rep.tokens0; d != 0 || rep.tokens1 < 1 {
		t.Errorf("token requests: %d total, %d during the run", rep.tokens1, d)
	}
	if d := rep.tls1 - rep.tls0; d > 3 {
		t.Errorf("%d upstream TLS sessions during 50 messages; the pool allows 3", d)
	}
	if rep.violations != 0 {
		t.Errorf("%d protocol violations at the fake Exchange", rep.violations)
	}
	// VmHWM is not compared with the sampled peak: the kernel updates its
	// high-water mark lazily (per-thread counters, not at every unmap), so
	// a sample of VmRSS can exceed a VmHWM read later.
	if rep.rssIdle <= 0 || rep.rssPeak <= 0 || rep.hwm <= 0 {
		t.Errorf("memory not read: idle %d peak %d hwm %d", rep.rssIdle, rep.rssPeak, rep.hwm)
	}
	if len(rep.fsync.file) != 20 || len(rep.fsync.put) != 20 {
		t.Errorf("fsync samples: %d %d", len(rep.fsync.file), len(rep.fsync.put))
	}
	for _, want := range []string{"fsync floor:", "time-to-250:", "delivery:", "errors:         none", "relay RSS:", "Entra ID:", "Exchange:"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q", want)
		}
	}
}

func TestLoopbackOnly(t *testing.T) {
	t.Parallel()
	for addr, ok := range map[string]bool{
		"127.0.0.1:2525":      true,
		"127.9.8.7:25":        true,
		"[::1]:2525":          true,
		"localhost:2525":      true,
		"10.0.0.1:25":         false,
		"192.168.1.10:2525":   false,
		"[2001:db8::1]:25":    false,
		"0.0.0.0:2525":        false,
		"smtp.example.com:25": false,
		"127.0.0.1":           false,
		"[::ffff:8.8.8.8]:25": false,
	} {
		err := checkLoopback(addr)
		if (err == nil) != ok {
			t.Errorf("checkLoopback(%q) = %v, want ok=%v", addr, err, ok)
		}
	}
	var stderr bytes.Buffer
	if code := runMain(context.Background(), []string{"-relay", "10.1.2.3:25"}, &bytes.Buffer{}, &stderr); code != 2 ||
		!strings.Contains(stderr.String(), "not a loopback address") {
		t.Errorf("-relay 10.1.2.3:25: exit %d, %q", code, stderr.String())
	}
}

func TestFlagsBounded(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"-messages", "2000000"},
		{"-clients", "0"},
		{"-clients", "5000"},
		{"-size", "65MiB"},
		{"-size", "10"},
		{"-idle", "30000"},
		{"-duration", "2h"},
		{"-ack", "never"},
		{"-defer", "-relay", "127.0.0.1:2525"},
		{"-command", "smtp-source {addr}", "-messages", "0"},
	} {
		var stderr bytes.Buffer
		if code := runMain(context.Background(), args, &bytes.Buffer{}, &stderr); code != 2 {
			t.Errorf("%v: exit %d, want 2 (%s)", args, code, stderr.String())
		}
	}
}

func TestParseSize(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int{"10240": 10240, "10KiB": 10240, "10KB": 10000, "5MiB": 5 << 20, "35000000": 35_000_000, "1M": 1 << 20} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-1", "10GB"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) accepted", in)
		}
	}
}

// TestMessageShape: every message is exactly the size asked for, in CRLF
// lines with no bare CR or LF (which the relay would refuse), and its
// recipient maps back to its sequence number.
func TestMessageShape(t *testing.T) {
	t.Parallel()
	for _, size := range []int{minSize, minSize + 1, minSize + 77, minSize + 78, minSize + 79, 10 << 10, 100_003} {
		m := append(header(42), body(size)...)
		if len(m) != size {
			t.Errorf("size %d: got %d bytes", size, len(m))
		}
		if !bytes.HasSuffix(m, []byte("\r\n")) {
			t.Errorf("size %d: does not end in CRLF", size)
		}
		for i, b := range m {
			if b == '\n' && (i == 0 || m[i-1] != '\r') || b == '\r' && (i+1 >= len(m) || m[i+1] != '\n') {
				t.Fatalf("size %d: bare line ending at %d", size, i)
			}
		}
	}
	if seqOf(rcptFor(1234)) != 1234 || seqOf("someone@fabrikam.example") != -1 || seqOf("load-1@other.example") != -1 {
		t.Error("recipient round trip")
	}
}

// TestDeliveryMatchedByMessageID: each message's delivery latency is its
// own (the 250 it got to the moment Exchange accepted that Message-ID),
// whatever order the messages arrive in, and the curve and the order
// figures show a message that was overtaken.
func TestDeliveryMatchedByMessageID(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	rep := &report{results: make([]result, 4)}
	for seq := 1; seq <= 3; seq++ {
		rep.results[seq] = result{ok: true, acked: t0.Add(time.Duration(seq) * time.Second)}
	}
	msg := func(seq int, at time.Duration) exchangetest.Message {
		return exchangetest.Message{MessageID: fmt.Sprintf("<load.%010d@contoso.example>", seq),
			RcptTo: []string{"someone@fabrikam.example"}, Accepted: t0.Add(at)}
	}
	// Message 1 is overtaken by 2 and 3 and arrives last.
	rep.matchDeliveries([]exchangetest.Message{msg(2, 2100*time.Millisecond), msg(3, 3100*time.Millisecond), msg(1, 9*time.Second)})
	if rep.unmatched != 0 || len(rep.deliveries) != 3 {
		t.Fatalf("matched %d, unmatched %d", len(rep.deliveries), rep.unmatched)
	}
	want := map[int]time.Duration{1: 8 * time.Second, 2: 100 * time.Millisecond, 3: 100 * time.Millisecond}
	for _, d := range rep.deliveries {
		if d.latency() != want[d.seq] {
			t.Errorf("message %d: latency %s, want %s", d.seq, d.latency(), want[d.seq])
		}
	}
	if !rep.lastArrival.Equal(t0.Add(9 * time.Second)) {
		t.Errorf("last arrival %s", rep.lastArrival)
	}
	cv := makeCurve(rep.deliveries)
	if len(cv.points) == 0 || cv.points[0].pos != 1 || cv.points[0].latency != 8*time.Second {
		t.Errorf("curve %v: the first message acknowledged waited 8 s", cv)
	}
	if cv.maxDisplaced != 2 || cv.overtakenBy1s != 1 {
		t.Errorf("order: max displaced %d, overtaken %d; want 2 and 1", cv.maxDisplaced, cv.overtakenBy1s)
	}
	if seqOfMessageID("<load.0000000042@contoso.example>") != 42 || seqOfMessageID("<x@y>") != -1 {
		t.Error("Message-ID round trip")
	}
}
