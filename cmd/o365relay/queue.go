package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/o365relay/o365relay/relay/admin"
	"github.com/o365relay/o365relay/relay/message"
	"github.com/o365relay/o365relay/relay/spool"
)

// runQueue works on the spool directly, beside a running daemon or a stopped
// one (spool.OpenAdmin takes no lock; the daemon rescans queue/ and re-reads a
// message's state before every attempt, so a retry or delete takes effect
// within its rescan interval, 30 s).
func runQueue(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("queue", "queue [--config FILE] [--spool-dir DIR] list | show ID | retry ID|all | delete ID | failed\n\n"+
		"  list          queued messages, oldest first\n"+
		"  show ID       one message's envelope and delivery state (never its body)\n"+
		"  retry ID|all  make a queued message due now, or move a failed one back into the queue\n"+
		"  delete ID     remove a message from the queue or from failed/\n"+
		"  failed        messages that failed for good, with the reason", stderr)
	cfg, rest, code := loadCommand(fs, args, true, stderr)
	if cfg == nil {
		return code
	}
	if len(rest) == 0 {
		fs.Usage()
		return 2
	}
	sp, err := spool.OpenAdmin(spool.Options{Dir: cfg.SpoolDir, Fsync: true})
	if err != nil {
		return exitErr(stderr, fmt.Errorf("spool_dir %s: %w", cfg.SpoolDir, err))
	}
	defer func() {
		if err := sp.Close(); err != nil {
			fmt.Fprintln(stderr, "o365relay: closing spool:", err)
		}
	}()
	needID := func() (message.ID, error) {
		if len(rest) != 2 {
			return "", fmt.Errorf("queue %s needs one message ID: %w", rest[0], errUsage)
		}
		id := message.ID(strings.ToUpper(rest[1]))
		if !id.Valid() {
			return "", fmt.Errorf("%q is not a message ID (23 characters, as in 'o365relay queue list')", rest[1])
		}
		return id, nil
	}
	switch rest[0] {
	case "list":
		es, err := sp.List()
		if err != nil {
			return exitErr(stderr, err)
		}
		printEntries(stdout, es, false)
	case "failed":
		es, err := sp.ListFailed()
		if err != nil {
			return exitErr(stderr, err)
		}
		printEntries(stdout, es, true)
	case "show":
		id, err := needID()
		if err != nil {
			return exitErr(stderr, err)
		}
		e, err := sp.Get(id)
		if errors.Is(err, spool.ErrNotFound) {
			e, err = findFailed(sp, id)
		}
		if err != nil {
			return exitErr(stderr, err)
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(struct {
			Envelope *message.Envelope `json:"envelope"`
			State    spool.State       `json:"state"`
		}{e.Envelope, e.State}); err != nil {
			return exitErr(stderr, err)
		}
	case "retry":
		if len(rest) == 2 && rest[1] == "all" {
			es, err := sp.List()
			if err != nil {
				return exitErr(stderr, err)
			}
			fes, err := sp.ListFailed()
			if err != nil {
				return exitErr(stderr, err)
			}
			n := 0
			for _, e := range append(es, fes...) {
				if err := sp.Retry(e.Envelope.ID); err != nil && !errors.Is(err, spool.ErrNotFound) {
					return exitErr(stderr, err)
				}
				n++
			}
			fmt.Fprintf(stdout, "%d messages due now\n", n)
			return 0
		}
		id, err := needID()
		if err != nil {
			return exitErr(stderr, err)
		}
		if err := sp.Retry(id); err != nil {
			return exitErr(stderr, err)
		}
		fmt.Fprintf(stdout, "%s due now\n", id)
	case "delete":
		id, err := needID()
		if err != nil {
			return exitErr(stderr, err)
		}
		if err := sp.Delete(id); err != nil {
			return exitErr(stderr, err)
		}
		fmt.Fprintf(stdout, "%s deleted\n", id)
	default:
		fmt.Fprintf(stderr, "o365relay queue: unknown action %q\n\n", rest[0])
		fs.Usage()
		return 2
	}
	return 0
}

func findFailed(sp *spool.Spool, id message.ID) (*spool.Entry, error) {
	es, err := sp.ListFailed()
	if err != nil {
		return nil, err
	}
	for i := range es {
		if es[i].Envelope.ID == id {
			return &es[i], nil
		}
	}
	return nil, spool.ErrNotFound
}

func printEntries(w io.Writer, es []spool.Entry, failed bool) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	last := "NEXT ATTEMPT\tLAST ERROR"
	if failed {
		last = "REASON"
	}
	fmt.Fprintf(tw, "ID\tRECEIVED\tSIZE\tFROM\tRCPTS\tATTEMPTS\t%s\n", last)
	for _, e := range es {
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
	fmt.Fprintf(w, "%d message(s)\n", len(es))
}

// runHealthcheck asks the running relay's /readyz: exit 0 when ready, 1
// otherwise. It is the container HEALTHCHECK in images without a shell.
func runHealthcheck(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("healthcheck", "healthcheck [--config FILE] [--admin-listen ADDR]\n\nExits 0 if the relay's /readyz (at admin_listen) says ready, 1 otherwise.", stderr)
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
