package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/o365relay/o365relay/relay/control"
	"github.com/o365relay/o365relay/relay/doctor"
)

// daemonCheck adds, when a relay is running on the configured spool, what
// that daemon itself sees (relay/status over its control socket): the
// doctor checks the setup from the outside, with its own environment, while
// the daemon may be failing for a reason the doctor's run does not show
// (another credential file, a token refused an hour ago, a held mailbox).
// Not ready fails the check; a missing token or a held mailbox warns. No
// daemon: no check.
func daemonCheck(ctx context.Context, spoolDir string) (doctor.Check, bool) {
	if spoolExists(spoolDir) != nil {
		return doctor.Check{}, false
	}
	c, err := control.Dial(ctx, control.SocketPath(spoolDir))
	if err != nil {
		return doctor.Check{}, false
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ch := doctor.Check{Step: 8, Name: "daemon", Target: spoolDir}
	st, err := c.Status(ctx)
	if err != nil {
		ch.Status, ch.Message = doctor.Fail, "the running relay does not answer on its control socket: "+err.Error()
		ch.Fix = "See the relay's log (journalctl -u o365relay, kubectl logs, docker logs)."
		return ch, true
	}
	ch.Details = map[string]string{"token": st.Token.State, "queued": fmt.Sprint(st.Queue.Messages), "version": st.Build.String()}
	problems := st.Problems()
	switch {
	case !st.Ready.OK:
		ch.Status = doctor.Fail
	case len(problems) > 0:
		ch.Status = doctor.Warn
	default:
		ch.Status = doctor.OK
		ch.Message = fmt.Sprintf("the running relay is ready, holds a token and delivers; %d message(s) queued", st.Queue.Messages)
		return ch, true
	}
	ch.Message = "the running relay reports: " + strings.Join(problems, "; ")
	ch.Fix = "'o365relay status' shows the running relay's view; fix the first ✘ above first (the daemon retries on its own), then 'o365relay queue retry all'."
	return ch, true
}
