package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/o365relay/o365relay/relay/admin"
	"github.com/o365relay/o365relay/relay/control"
	"github.com/o365relay/o365relay/relay/envelope"
)

// runQueue administers the queue through the running daemon's control
// socket, or, when no daemon runs, on the spool itself (queueadmin.go).
// Every change takes effect before the command returns.
func runQueue(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("queue", "queue [--config FILE] [--spool-dir DIR] list | show ID | retry ID|all | delete ID | failed\n\n"+
		"  list          queued messages, oldest first\n"+
		"  show ID       one message's envelope and delivery state (never its body)\n"+
		"  retry ID|all  make a queued message due now, or move a failed one back into the queue\n"+
		"  delete ID     remove a message from the queue or from failed/\n"+
		"  failed        messages that failed for good, with the reason\n\n"+
		"With a relay running on the spool the daemon makes each change at once (its\n"+
		"control socket, spool_dir/control.sock); run it as the relay's user. Give the\n"+
		"daemon's spool_dir (O365RELAY_SPOOL_DIR): a missing one is an error.", stdout, stderr)
	cfg, rest, code := loadCommand(fs, args, true, stderr)
	if cfg == nil {
		return code
	}
	if len(rest) == 0 {
		fs.Usage()
		return 2
	}
	switch rest[0] {
	case "list", "failed", "show", "retry", "delete":
	default:
		fmt.Fprintf(stderr, "o365relay queue: unknown action %q\n\n", rest[0])
		fs.Usage()
		return 2
	}
	id, err := queueID(rest)
	if err != nil {
		return exitErr(stderr, err)
	}
	q, closeQ, err := openAdmin(ctx, cfg.SpoolDir)
	if err != nil {
		return exitErr(stderr, err)
	}
	defer func() {
		if err := closeQ(); err != nil {
			fmt.Fprintln(stderr, "o365relay: closing spool:", err)
		}
	}()
	return queueAction(ctx, q, rest[0], id, stdout, stderr)
}

// queueID checks the message ID of show, delete and retry ID before the
// spool is opened; it is "" for the actions that take none (retry all).
func queueID(rest []string) (envelope.ID, error) {
	if !(rest[0] == "show" || rest[0] == "delete" || (rest[0] == "retry" && !(len(rest) == 2 && rest[1] == "all"))) {
		return "", nil
	}
	if len(rest) != 2 {
		return "", fmt.Errorf("queue %s needs one message ID: %w", rest[0], errUsage)
	}
	id := envelope.ID(strings.ToUpper(rest[1]))
	if !id.Valid() {
		return "", fmt.Errorf("%q is not a message ID (23 characters, as in 'o365relay queue list')", rest[1])
	}
	return id, nil
}

// queueAction carries out one checked action through q.
func queueAction(ctx context.Context, q control.Admin, action string, id envelope.ID, stdout, stderr io.Writer) int {
	switch action {
	case "list", "failed":
		list := q.List
		if action == "failed" {
			list = q.ListFailed
		}
		ms, err := list(ctx)
		if err != nil {
			return exitErr(stderr, err)
		}
		printEntries(stdout, ms, action == "failed")
	case "show":
		m, err := q.Get(ctx, id)
		if err != nil {
			return exitErr(stderr, err)
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(m); err != nil {
			return exitErr(stderr, err)
		}
	case "retry":
		if id == "" {
			n, err := q.RetryAll(ctx)
			if err != nil {
				return exitErr(stderr, err)
			}
			fmt.Fprintf(stdout, "%d messages due now\n", n)
			return 0
		}
		if err := q.Retry(ctx, id); err != nil {
			return exitErr(stderr, err)
		}
		fmt.Fprintf(stdout, "%s due now\n", id)
	case "delete":
		if err := q.Delete(ctx, id); err != nil {
			return exitErr(stderr, err)
		}
		fmt.Fprintf(stdout, "%s deleted\n", id)
	}
	return 0
}

func printEntries(w io.Writer, ms []control.Message, failed bool) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	last := "NEXT ATTEMPT\tLAST ERROR"
	if failed {
		last = "REASON"
	}
	fmt.Fprintf(tw, "ID\tRECEIVED\tSIZE\tFROM\tRCPTS\tATTEMPTS\t%s\n", last)
	for _, e := range ms {
		env := e.Envelope
		from := env.From
		if from == "" {
			from = "<>"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%d\t", env.ID, env.Received.UTC().Format(time.RFC3339), env.Size, from, len(env.To), e.State.Attempts)
		if failed {
			fmt.Fprintf(tw, "%s\n", e.State.Final)
			continue
		}
		next := "now"
		if !e.State.NextAttempt.IsZero() {
			next = e.State.NextAttempt.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\n", next, e.State.LastError)
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "%d message(s)\n", len(ms))
}

// runHealthcheck asks the running relay's /readyz: exit 0 when ready, 1
// otherwise. It is the container HEALTHCHECK in images without a shell.
func runHealthcheck(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("healthcheck", "healthcheck [--config FILE] [--admin-listen ADDR]\n\nExits 0 if the relay's /readyz (at admin_listen) says ready, 1 otherwise.", stdout, stderr)
	cfg, _, code := loadCommand(fs, args, false, stderr)
	if cfg == nil {
		return code
	}
	if cfg.AdminListen == "" {
		fmt.Fprintln(stderr, "o365relay healthcheck: admin_listen (O365RELAY_ADMIN_LISTEN) is empty, so there is no /readyz to ask")
		return 1
	}
	if err := admin.Probe(ctx, cfg.AdminListen); err != nil {
		fmt.Fprintln(stderr, "not ready:", err)
		return 1
	}
	fmt.Fprintln(stdout, "ready")
	return 0
}
