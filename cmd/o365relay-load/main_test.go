package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// TestSmallRun runs the tool end to end as its default mode does (relay
// built and run as a child process between the in-process fakes) with 50
// messages from 2 clients, and checks what the report must show — not how
// fast anything was (house rule 5).
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
	// Steady state (issue 8): the warm-up got the token and opened the
	// pool; the message path must not ask Entra ID again, and may open at
	// most the pool's three connections.
	if d := rep.tokens1 - rep.tokens0; d != 0 || rep.tokens1 < 1 {
		t.Errorf("token requests: %d total, %d during the run", rep.tokens1, d)
	}
	if d := rep.tls1 - rep.tls0; d > 3 {
		t.Errorf("%d upstream TLS sessions during 50 messages; the pool allows 3", d)
	}
	if rep.violations != 0 {
		t.Errorf("%d protocol violations at the fake Exchange", rep.violations)
	}
	if rep.rssIdle <= 0 || rep.rssPeak <= 0 || rep.hwm < rep.rssPeak {
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
