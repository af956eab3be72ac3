package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/o365relay/o365relay/relay/control"
	"github.com/o365relay/o365relay/relay/status"
)

// runStatus prints the running daemon's status (relay/status): readiness,
// the token, the certificate, each mailbox's holds, the queue. It asks the
// control socket in spool_dir and, if that cannot be reached (another
// user's spool), the admin listener's /status. Exit 0 when the daemon is
// ready, 1 when it is not or cannot be reached.
func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("status", "status [--config FILE] [--json] [--spool-dir DIR] [--admin-listen ADDR]\n\n"+
		"Shows what the running relay is doing: whether it is ready to take mail, the\n"+
		"token (expiry, last Entra ID error), the certificate, which mailboxes are held\n"+
		"and why, the queue. Asks the control socket in spool_dir, else admin_listen's\n"+
		"/status. Exit 0 when the relay is ready (even if delivery is held: see the\n"+
		"output), 1 when it is not or cannot be reached.", stdout, stderr)
	asJSON := fs.Bool("json", false, "print the status document as JSON")
	cfg, _, code := loadCommand(fs, args, false, stderr)
	if cfg == nil {
		return code
	}
	st, err := fetchStatus(ctx, cfg.SpoolDir, cfg.AdminListen)
	if err != nil {
		return exitErr(stderr, err)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(st); err != nil {
			return exitErr(stderr, err)
		}
	} else {
		printStatus(stdout, st, time.Now())
	}
	if !st.Ready.OK {
		return 1
	}
	return 0
}

// fetchStatus asks the control socket, then the admin listener.
func fetchStatus(ctx context.Context, spoolDir, adminAddr string) (*status.Status, error) {
	var sockErr error
	if err := spoolExists(spoolDir); err != nil {
		sockErr = err
	} else if c, err := control.Dial(ctx, control.SocketPath(spoolDir)); err != nil {
		sockErr = err
	} else {
		defer c.Close()
		st, err := c.Status(ctx)
		if err != nil {
			return nil, err
		}
		return &st, nil
	}
	if adminAddr == "" {
		return nil, fmt.Errorf("no running relay found: %w (and admin_listen is empty)", sockErr)
	}
	st, err := adminStatus(ctx, adminAddr)
	if err != nil {
		return nil, fmt.Errorf("no running relay found: %w; admin_listen %s: %w", sockErr, adminAddr, err)
	}
	return st, nil
}

func adminStatus(ctx context.Context, addr string) (*status.Status, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1" // a wildcard listener is reachable on loopback
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(host, port)+"/status", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, errors.New(resp.Status)
	}
	var st status.Status
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&st); err != nil {
		return nil, err
	}
	return &st, nil
}

// printStatus writes the status for a person.
func printStatus(w io.Writer, st *status.Status, now time.Time) {
	ago := func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		d := now.Sub(t).Round(time.Second)
		if d < 0 {
			return fmt.Sprintf("%s (in %s)", t.UTC().Format(time.RFC3339), (-d).String())
		}
		return fmt.Sprintf("%s (%s ago)", t.UTC().Format(time.RFC3339), d)
	}
	fmt.Fprintf(w, "o365relay %s\n", st.Build)
	if st.Ready.OK {
		fmt.Fprintln(w, "ready:        yes — listener serving, spool writable with room, not draining")
	} else {
		fmt.Fprintln(w, "ready:        NO — mail handed over now is refused or not safe")
		for _, c := range st.Ready.Checks {
			if !c.OK {
				fmt.Fprintf(w, "                %s: %s\n", c.Name, c.Error)
			}
		}
	}
	t := st.Token
	switch t.State {
	case status.TokenValid:
		fmt.Fprintf(w, "token:        valid until %s (%s credential)\n", ago(t.ExpiresAt), t.Credential)
	case status.TokenFailing:
		fmt.Fprintf(w, "token:        held until %s, but refreshing it fails\n", ago(t.ExpiresAt))
	default:
		fmt.Fprintf(w, "token:        NONE (%s credential) — nothing can be delivered until Entra ID issues one\n", t.Credential)
	}
	if t.LastError != "" {
		fmt.Fprintf(w, "  last error: %s\n", t.LastError)
	}
	fmt.Fprintf(w, "  last success %s; next request %s\n", ago(t.LastSuccess), ago(t.NextRefresh))
	if c := st.Certificate; c != nil {
		fmt.Fprintf(w, "certificate:  %s, thumbprint %s, expires %s\n", c.Subject, c.Thumbprint, ago(c.NotAfter))
	}
	fmt.Fprintln(w, "mailboxes:")
	for _, m := range st.Mailboxes {
		if m.Held {
			fmt.Fprintf(w, "  %-30s HELD until %s: %s\n", m.Name, ago(m.HeldUntil), m.Reason)
		} else {
			fmt.Fprintf(w, "  %-30s delivering\n", m.Name)
		}
	}
	q := st.Queue
	fmt.Fprintf(w, "queue:        %d message(s), %d bytes", q.Messages, q.Bytes)
	if !q.Oldest.IsZero() {
		fmt.Fprintf(w, ", oldest received %s", ago(q.Oldest))
	}
	fmt.Fprintln(w)
	if p := st.Problems(); len(p) > 0 {
		fmt.Fprintln(w, "\nwhy mail is waiting:")
		for _, s := range p {
			fmt.Fprintf(w, "  - %s\n", s)
		}
		fmt.Fprintln(w, "\n'o365relay doctor' checks the setup step by step and prints the fix.")
	} else {
		fmt.Fprintln(w, "\nnothing holds delivery back.")
	}
}
