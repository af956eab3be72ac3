package main

import (
	"strings"
	"testing"

	"github.com/o365relay/o365relay/relay/exchangetest"
	"github.com/o365relay/o365relay/relay/relaytest"
)

// The daemon's log line for a 535 carries the same one-line hint as
// `o365relay doctor`'s ✘ line (upstream.AuthHint): here the app was never
// granted the mailbox (no Add-MailboxPermission), so the queue is held and
// the line says which steps to revisit.
func TestE2EDaemonLogsTheDoctorsHintFor535(t *testing.T) {
	t.Parallel()
	requireTool(t, "swaks")
	cloud, err := relaytest.New(relaytest.Options{Dir: t.TempDir(), Exchange: func(o *exchangetest.Options) {
		o.Mailboxes[relaytest.Mailbox] = exchangetest.Mailbox{} // no FullAccess for the app
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cloud.Close(); err != nil {
			t.Error(err)
		}
	})
	e := startE2E(t, cloud)
	if out, ok := swaksSend(t, e.smtp, "not granted"); !ok {
		t.Fatalf("swaks: %s", out)
	}
	waitFor(t, e.relay, "mailbox held: delivery paused")
	var held string
	for _, l := range strings.Split(e.relay.out.String(), "\n") {
		if strings.Contains(l, "mailbox held: delivery paused") {
			held = l
		}
	}
	for _, want := range []string{`"hint":`, "Add-MailboxPermission", "New-ServicePrincipal", "o365relay doctor"} {
		if !strings.Contains(held, want) {
			t.Errorf("held line lacks %q:\n%s", want, held)
		}
	}
	waitFor(t, e.relay, "Exchange refused AUTH with a fresh token")
	e.relay.stop()
}
