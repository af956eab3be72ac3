package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/o365relay/o365relay/relay/control"
	"github.com/o365relay/o365relay/relay/status"
)

var idRE = regexp.MustCompile(`(?m)^([0-9A-Z]{23})\s`)

// queueIDs runs `queue list` and returns the IDs it prints.
func queueIDs(t *testing.T, spool string) []string {
	t.Helper()
	out, code := runTool(t, nil, binPath, "queue", "--spool-dir", spool, "list")
	if code != 0 {
		t.Fatalf("queue list: exit %d\n%s", code, out)
	}
	var ids []string
	for _, m := range idRE.FindAllStringSubmatch(out, -1) {
		ids = append(ids, m[1])
	}
	return ids
}

// `queue` against a running daemon: every change is made by the daemon
// before the command returns — its own view (/status) shows a deletion at
// once, and a retried message is delivered while the others keep waiting
// for their next attempt an hour away.
func TestE2EQueueThroughDaemon(t *testing.T) {
	t.Parallel()
	cloud := newCloud(t)
	cloud.Exchange.SetDown(true)
	e := startE2E(t, cloud, "O365RELAY_RETRY_MIN=1h", "O365RELAY_RETRY_MAX=1h")
	sendN(t, e.smtp, 3, "queued")
	// Each message had its first attempt (against a dead Exchange) and now
	// waits an hour.
	e.relay.waitUntil("a first attempt of every message", func() bool { return len(deferrals(e.relay)) == 3 })
	ids := queueIDs(t, e.spool)
	if len(ids) != 3 {
		t.Fatalf("queue list shows %v, want 3 messages", ids)
	}

	if o, code := runTool(t, nil, binPath, "queue", "--spool-dir", e.spool, "delete", ids[0]); code != 0 {
		t.Fatalf("queue delete: exit %d\n%s", code, o)
	}
	// The daemon's own view has changed already: no rescan to wait for.
	if st := getStatus(t, e.admin); st.Queue.Messages != 2 {
		t.Errorf("after queue delete the daemon counts %d messages, want 2", st.Queue.Messages)
	}
	e.relay.waitLog("the daemon's own record of the deletion", fields{"msg": "control: delete", "id": ids[0]})
	if o, code := runTool(t, nil, binPath, "queue", "--spool-dir", e.spool, "show", ids[0]); code != 1 || !strings.Contains(o, "no such message") {
		t.Errorf("queue show of a deleted message: exit %d\n%s", code, o)
	}

	cloud.Exchange.SetDown(false)
	out, code := runTool(t, nil, binPath, "queue", "--spool-dir", e.spool, "retry", strings.ToLower(ids[1]))
	if code != 0 {
		t.Fatalf("queue retry: exit %d\n%s", code, out)
	}
	e.relay.waitLog("the daemon's own record of the retry", fields{"msg": "control: retry", "id": ids[1]})
	e.waitMessages(1)
	e.relay.waitLog("the retried message delivered", fields{"msg": "delivered", "id": ids[1]})
	if n := len(e.relay.logged(fields{"msg": "delivered"})); n != 1 {
		t.Errorf("%d messages delivered after the retry of one (the others wait an hour)", n)
	}
	if o, code := runTool(t, nil, binPath, "queue", "--spool-dir", e.spool, "retry", "all"); code != 0 || !strings.Contains(o, "1 messages due now") {
		t.Fatalf("queue retry all: exit %d\n%s", code, o)
	}
	e.waitMessages(2)
	waitStatus(t, e.admin, "an empty queue", func(st status.Status) bool { return st.Queue.Messages == 0 })
	if n := len(cloud.Exchange.Messages()); n != 2 {
		t.Errorf("%d messages delivered, want 2 (one was deleted)", n)
	}
	e.relay.stop()
	if _, err := os.Stat(control.SocketPath(e.spool)); !os.IsNotExist(err) {
		t.Errorf("the control socket outlived the daemon: %v", err)
	}
}

// Without a daemon and without a spool the command says so, naming the
// setting, and creates nothing; without a daemon but with a spool it works
// on the spool itself.
func TestQueueWithoutDaemon(t *testing.T) {
	t.Parallel()
	missing := filepath.Join(t.TempDir(), "spool")
	for _, args := range [][]string{{"queue", "--spool-dir", missing, "list"}, {"queue", "--spool-dir", missing, "retry", "all"}, {"status", "--spool-dir", missing, "--admin-listen", ""}} {
		out, code := runToolWith(t, []string{"PATH=" + os.Getenv("PATH")}, nil, binPath, args...)
		if code != 1 || !strings.Contains(out, "spool_dir "+missing+" does not exist") || !strings.Contains(out, "O365RELAY_SPOOL_DIR") {
			t.Errorf("%v without a spool: exit %d, want 1 naming spool_dir and O365RELAY_SPOOL_DIR:\n%s", args, code, out)
		}
		if _, err := os.Stat(missing); !os.IsNotExist(err) {
			t.Fatalf("%v created %s (%v)", args, missing, err)
		}
	}

	// A spool a stopped daemon left: the command opens it itself.
	cloud := newCloud(t)
	cloud.Exchange.SetDown(true)
	e := startE2E(t, cloud, "O365RELAY_RETRY_MIN=1h", "O365RELAY_RETRY_MAX=1h")
	sendN(t, e.smtp, 2, "left behind")
	e.relay.stop()
	ids := queueIDs(t, e.spool)
	if len(ids) != 2 {
		t.Fatalf("queue list without a daemon: %v, want 2 messages", ids)
	}
	if o, code := runTool(t, nil, binPath, "queue", "--spool-dir", e.spool, "delete", ids[0]); code != 0 {
		t.Fatalf("queue delete without a daemon: exit %d\n%s", code, o)
	}
	if ids := queueIDs(t, e.spool); len(ids) != 1 {
		t.Errorf("after delete: %v, want 1 message", ids)
	}
	if o, code := runTool(t, nil, binPath, "status", "--spool-dir", e.spool, "--admin-listen", ""); code != 1 || !strings.Contains(o, "no running relay") {
		t.Errorf("status without a daemon: exit %d, want 1:\n%s", code, o)
	}
}
