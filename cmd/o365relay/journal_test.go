package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/config/waitfor"
	"github.com/o365relay/o365relay/token/entratest"
)

// streamID is f's "device:inode", as systemd puts it in JOURNAL_STREAM.
func streamID(t *testing.T, f *os.File) string {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

// Every line carries its syslog priority when JOURNAL_STREAM names the
// stream the logger writes to, and none otherwise (another stream, garbage,
// unset), in both log formats.
func TestJournalPriorityPrefix(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Create(dir + "/log")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	other, err := os.Create(dir + "/other")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	for _, tc := range []struct {
		stream string
		want   bool
	}{{streamID(t, f), true}, {streamID(t, other), false}, {"", false}, {"12:x", false}, {"1", false}} {
		for _, format := range []string{"json", "console"} {
			t.Run(fmt.Sprintf("%s/%s", tc.stream, format), func(t *testing.T) {
				t.Setenv("JOURNAL_STREAM", tc.stream)
				if err := f.Truncate(0); err != nil {
					t.Fatal(err)
				}
				if _, err := f.Seek(0, 0); err != nil {
					t.Fatal(err)
				}
				log, _, err := newLogger(&config.Config{LogLevel: "debug", LogFormat: format}, f)
				if err != nil {
					t.Fatal(err)
				}
				log.Debug("d")
				log.Info("i")
				log.Warn("w")
				log.Error("e")
				b, err := os.ReadFile(f.Name())
				if err != nil {
					t.Fatal(err)
				}
				lines := strings.Split(strings.TrimSpace(string(b)), "\n")
				if len(lines) != 4 {
					t.Fatalf("%d lines: %q", len(lines), b)
				}
				for i, p := range []string{"<7>", "<6>", "<4>", "<3>"} {
					if got := strings.HasPrefix(lines[i], p); got != tc.want {
						t.Errorf("line %q: prefix %s is %v, want %v", lines[i], p, got, tc.want)
					}
					if !tc.want && strings.HasPrefix(lines[i], "<") {
						t.Errorf("line %q has a prefix", lines[i])
					}
				}
			})
		}
	}
}

// Through the built binary: its stderr is a pipe; with JOURNAL_STREAM naming
// that pipe the warnings of a relay that cannot reach Entra ID carry <4>
// and its info lines <6>; naming something else, no line has a prefix.
func TestE2EJournalPriority(t *testing.T) {
	t.Parallel()
	cloud := newCloud(t)
	cloud.Entra.SetOutage(entratest.OutageDrop)
	for _, match := range []bool{true, false} {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		stream := streamID(t, w)
		if !match {
			stream = "0:1" // inherited from somewhere else: not our stderr
		}
		env, _, _ := relayEnv(t, cloud, t.TempDir(), "JOURNAL_STREAM="+stream)
		cmd := exec.Command(binPath, "serve")
		cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
		cmd.Stderr, cmd.Stdout = w, w
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		_ = w.Close() // the child has it
		out := &output{}
		var eof atomic.Bool
		copied := make(chan struct{})
		go func() {
			defer close(copied)
			_, _ = io.Copy(out, r)
			eof.Store(true)
			out.changes.Notify()
		}()
		// The first line of each kind, by its "msg" field once a priority
		// prefix ("<6>") is taken off.
		var info, warn string
		waitfor.On(t, &out.changes, "a listening line and a token warning", func() bool {
			for l := range strings.Lines(out.String()) {
				var e entry
				if i := strings.IndexByte(l, '{'); i < 0 || json.Unmarshal([]byte(l[i:]), &e) != nil {
					continue
				}
				switch {
				case info == "" && e.has(fields{"msg": "listening"}):
					info = l
				case warn == "" && e.has(fields{"msg": "token request failed", "level": "warn"}):
					warn = l
				}
			}
			return (info != "" && warn != "") || eof.Load()
		})
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		<-copied // to EOF: the child is gone
		_ = r.Close()
		if info == "" || warn == "" {
			t.Fatalf("match=%v: no listening/token warning lines (info %q, warn %q)", match, info, warn)
		}
		if match && (!strings.HasPrefix(info, "<6>{") || !strings.HasPrefix(warn, "<4>{")) {
			t.Errorf("JOURNAL_STREAM names stderr, lines lack the priority:\n%s\n%s", info, warn)
		}
		if !match && (!strings.HasPrefix(info, "{") || !strings.HasPrefix(warn, "{")) {
			t.Errorf("JOURNAL_STREAM names another stream, lines have a prefix:\n%s\n%s", info, warn)
		}
	}
}
