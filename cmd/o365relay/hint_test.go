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
	held := e.relay.waitLog("the mailbox held at AUTH", fields{"msg": "mailbox held: delivery paused", "reason": "5.7.3", "cause": "auth"})
	for _, want := range []string{"Add-MailboxPermission", "New-ServicePrincipal", "o365relay doctor"} {
		if !strings.Contains(held.str("hint"), want) {
			t.Errorf("held line's hint lacks %q: %s", want, held)
		}
	}
	refused := e.relay.waitLog("the 535 with a fresh token", fields{"msg": "Exchange refused AUTH with a fresh token", "mailbox": relaytest.Mailbox})
	if refused.str("hint") != held.str("hint") || !strings.HasPrefix(refused.str("reply"), "535 5.7.3 ") {
		t.Errorf("the AUTH refusal does not carry Exchange's 535 and the same hint: %s", refused)
	}
	e.relay.stop()
}
