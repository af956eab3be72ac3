package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/o365relay/o365relay/relay/relaytest"
	"github.com/o365relay/o365relay/relay/status"
	"github.com/o365relay/o365relay/token/entratest"
)

// Entra ID is unreachable from the start: the relay is nevertheless ready
// (READY=1, /readyz 200, healthcheck 0) and accepts and spools mail, while
// /status, `o365relay status` and the STATUS= line say why nothing is
// delivered. When Entra answers again everything goes out.
func TestE2EReadyWithoutEntra(t *testing.T) {
	t.Parallel()
	cloud := newCloud(t)
	cloud.Entra.SetOutage(entratest.OutageDrop)
	notify := newNotifySocket(t)
	e := startE2E(t, cloud, "NOTIFY_SOCKET="+notify.path, "O365RELAY_RETRY_MIN=1s", "O365RELAY_RETRY_MAX=2s")

	notify.wait(t, "READY=1")
	if code, body := readyz(t, e.admin); code != http.StatusOK {
		t.Fatalf("/readyz %d without Entra ID, want 200: %s", code, body)
	}
	if o, code := runTool(t, nil, binPath, "healthcheck", "--admin-listen", e.admin); code != 0 {
		t.Errorf("healthcheck exit %d without Entra ID, want 0:\n%s", code, o)
	}
	sendN(t, e.smtp, 2, "entra down")

	st := waitStatus(t, e.admin, "the missing token and the held mailbox", func(st status.Status) bool {
		return st.Token.State == status.TokenNone && st.Token.LastError != "" && heldMailbox(st) && st.Queue.Messages == 2
	})
	if !st.Ready.OK {
		t.Errorf("/status not ready without Entra ID: %+v", st.Ready)
	}
	if n := len(cloud.Exchange.Messages()); n != 0 {
		t.Fatalf("%d messages delivered without a token", n)
	}
	out, code := runTool(t, nil, binPath, "status", "--spool-dir", e.spool)
	t.Logf("o365relay status:\n%s", out)
	for _, want := range []string{"ready:        yes", "token:        NONE", "HELD until", "2 message(s)", "why mail is waiting", "no token from Entra ID"} {
		if !strings.Contains(out, want) {
			t.Errorf("o365relay status lacks %q:\n%s", want, out)
		}
	}
	if code != 0 {
		t.Errorf("o365relay status exit %d for a ready relay, want 0:\n%s", code, out)
	}
	out, _ = runTool(t, nil, binPath, "status", "--json", "--spool-dir", e.spool)
	var js status.Status
	if err := json.Unmarshal([]byte(out), &js); err != nil || js.Token.State != status.TokenNone || js.Queue.Messages != 2 {
		t.Errorf("o365relay status --json: %v\n%s", err, out)
	}
	notify.wait(t, "STATUS=ready; no token (")
	// The doctor adds what the running daemon sees.
	out, _ = runToolWith(t, append([]string{"PATH=" + os.Getenv("PATH")}, e.env...), nil, binPath, "doctor")
	if !strings.Contains(out, "! 8 daemon: the running relay reports: no token from Entra ID") {
		t.Errorf("doctor does not report the running daemon's view:\n%s", out)
	}

	cloud.Entra.SetOutage(0)
	e.waitMessages(2)
	waitStatus(t, e.admin, "a valid token, no hold and an empty queue", func(st status.Status) bool {
		return st.Token.State == status.TokenValid && !heldMailbox(st) && st.Queue.Messages == 0
	})
	checkUpstreamClean(t, cloud)
	e.relay.stop()
	notify.wait(t, "STOPPING=1")
}

// A spool the relay cannot write to, or one that is full, makes it not
// ready, with the reason in /readyz, healthcheck, status and STATUS=; it is
// ready again once the spool is.
func TestE2ENotReadyWhenSpoolCannotTakeMail(t *testing.T) {
	t.Parallel()
	notify := newNotifySocket(t)
	e := startE2E(t, nil, "NOTIFY_SOCKET="+notify.path)
	notify.wait(t, "READY=1")
	if code, body := readyz(t, e.admin); code != http.StatusOK {
		t.Fatalf("/readyz %d, want 200: %s", code, body)
	}

	// Where the spool writes is not a directory: as good as read-only,
	// for root too (chmod would not stop root).
	tmp := filepath.Join(e.spool, "tmp")
	if err := os.Rename(tmp, tmp+".away"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tmp, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if code, body := readyz(t, e.admin); code != http.StatusServiceUnavailable || !strings.Contains(body, "spool not writable") {
		t.Errorf("/readyz with an unwritable spool: %d %s, want 503 naming the spool", code, body)
	}
	if o, code := runTool(t, nil, binPath, "healthcheck", "--admin-listen", e.admin); code != 1 {
		t.Errorf("healthcheck exit %d with an unwritable spool, want 1:\n%s", code, o)
	}
	if o, code := runTool(t, nil, binPath, "status", "--spool-dir", e.spool); code != 1 || !strings.Contains(o, "spool not writable") {
		t.Errorf("o365relay status exit %d with an unwritable spool, want 1 and the reason:\n%s", code, o)
	}
	notify.wait(t, "STATUS=NOT READY (spool: spool not writable")

	if err := os.Remove(tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp+".away", tmp); err != nil {
		t.Fatal(err)
	}
	if code, body := readyz(t, e.admin); code != http.StatusOK {
		t.Errorf("/readyz %d after the spool is back, want 200: %s", code, body)
	}
	e.relay.stop()

	// Full: spool_max_messages reached while Exchange is away.
	cloud := newCloud(t)
	cloud.Exchange.SetDown(true)
	full := startE2E(t, cloud, "O365RELAY_SPOOL_MAX_MESSAGES=1", "O365RELAY_RETRY_MIN=1h", "O365RELAY_RETRY_MAX=1h")
	sendN(t, full.smtp, 1, "fills the spool")
	if code, body := readyz(t, full.admin); code != http.StatusServiceUnavailable || !strings.Contains(body, "spool full") {
		t.Errorf("/readyz with a full spool: %d %s, want 503 naming spool_max_messages", code, body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := sendOne(ctx, full.smtp, relaytest.Mailbox, "x@fabrikam.example", testBody(relaytest.Mailbox, "x@fabrikam.example", "no room")); err == nil {
		t.Error("a message beyond spool_max_messages was accepted")
	}
	full.relay.stop()
}

// The series alerts need exist from the start: build info, and every
// per-mailbox counter and gauge of every configured mailbox (at 0, healthy
// at 1), so rate() and absent() work before the first event.
func TestE2EMetricsAtStart(t *testing.T) {
	t.Parallel()
	e := startE2E(t, nil) // returns once the relay logged "listening": every port is bound
	resp, err := http.Get("http://" + e.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	mb := `mailbox="` + relaytest.Mailbox + `"`
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^o365relay_build_info\{goversion="go[^"]+",revision="[^"]*",version="[^"]+"\} 1$`),
		regexp.MustCompile(`(?m)^o365relay_messages_received_total\{` + mb + `,result="accepted"\} 0$`),
		regexp.MustCompile(`(?m)^o365relay_messages_received_total\{` + mb + `,result="refused"\} 0$`),
		regexp.MustCompile(`(?m)^o365relay_delivery_outcomes_total\{` + mb + `,outcome="failed"\} 0$`),
		regexp.MustCompile(`(?m)^o365relay_delivery_outcomes_total\{` + mb + `,outcome="deferred"\} 0$`),
		regexp.MustCompile(`(?m)^o365relay_delivery_outcomes_total\{` + mb + `,outcome="delivered"\} 0$`),
		regexp.MustCompile(`(?m)^o365relay_delivery_paced_total\{limit="rate",` + mb + `\} 0$`),
		regexp.MustCompile(`(?m)^o365relay_delivery_mailbox_healthy\{` + mb + `\} 1$`),
		regexp.MustCompile(`(?m)^o365relay_ready 1$`),
	} {
		if !want.Match(b) {
			t.Errorf("/metrics at start lacks %s", want)
		}
	}
	e.relay.stop()
}
