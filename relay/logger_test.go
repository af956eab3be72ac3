package relay

import (
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/o365relay/o365relay/relay/spool"
)

// Each part of the relay logs under one name, given once, by New (the
// packages do not name their loggers again: no "spool.spool").
func TestLoggerNamesAreNotDoubled(t *testing.T) {
	t.Parallel()
	// A leftover in tmp/ makes the spool log at start.
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "tmp"), 0o700); err != nil {
		t.Fatal(err)
	}
	leftover := filepath.Join(dir, "tmp", "leftover")
	if err := os.WriteFile(leftover, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-2 * spool.TmpMaxAge)
	if err := os.Chtimes(leftover, old, old); err != nil {
		t.Fatal(err)
	}
	p := startPipeline(t, pipelineOptions{debugLogs: true, settings: map[string]string{"spool_dir": dir}})
	sc := p.dial(t)
	defer sc.close()
	for _, c := range []string{"EHLO app.example\r\n", "MAIL FROM:<app@app.example>\r\n", "RCPT TO:<x@fabrikam.example>\r\n", "DATA\r\n"} {
		sc.mustCmd(t, c)
	}
	if rep := sc.mustCmd(t, "Subject: names\r\n\r\nbody\r\n.\r\n"); !strings.HasPrefix(rep, "250 ") {
		t.Fatalf("message refused: %q%s", rep, p.problems())
	}
	seen := map[string]bool{}
	for _, e := range p.logs.All() {
		seen[e.LoggerName] = true
		parts := strings.Split(e.LoggerName, ".")
		for i := 1; i < len(parts); i++ {
			if parts[i] == parts[i-1] {
				t.Errorf("logger name %q repeats %q (%q)", e.LoggerName, parts[i], e.Message)
			}
		}
	}
	// ack=upstream: the message went through the listener and delivery
	// before the 250.
	for _, want := range []string{"smtpd", "spool", "delivery", "token"} {
		if !seen[want] {
			t.Errorf("no log entry named %q; names seen: %v", want, slices.Sorted(maps.Keys(seen)))
		}
	}
}
