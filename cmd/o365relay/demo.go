package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/relay"
	"github.com/o365relay/o365relay/relay/exchangetest"
	"github.com/o365relay/o365relay/relay/relaytest"
)

// runDemo is the README's first command: the relay's whole job, in one
// process, against the strict fakes of Entra ID and Exchange Online. Nothing
// is faked inside the relay: it reads its certificate from a file, signs a
// client assertion, gets a token over TLS from the fake Entra ID, spools the
// message with fsync and delivers it over STARTTLS + AUTH XOAUTH2.
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("demo", "demo [--verbose] [--from A] [--to B]\n\nStarts a fake Entra ID and a fake Exchange Online on loopback, a relay between\nthem, sends one message through the relay over SMTP and prints what Exchange\nreceived. Needs no Azure account and no network.", stdout, stderr)
	verbose := fs.Bool("verbose", false, "show the relay's log")
	from := fs.String("from", relaytest.Mailbox, "envelope sender and From: of the demo message (Exchange lets the mailbox send only as itself)")
	to := fs.String("to", "someone@fabrikam.example", "recipient of the demo message")
	if code, done := parseFlags(fs, args); done {
		return code
	}
	if err := demo(ctx, stdout, stderr, *verbose, *from, *to); err != nil {
		fmt.Fprintln(stderr, "demo failed:", err)
		return 1
	}
	return 0
}

// demo starts the fakes and a relay between them, sends one message and
// prints what Exchange received.
func demo(ctx context.Context, stdout, stderr io.Writer, verbose bool, from, to string) error {
	dir, err := os.MkdirTemp("", "o365relay-demo-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	say := func(format string, a ...any) { fmt.Fprintf(stdout, format+"\n", a...) }

	cloud, err := relaytest.New(relaytest.Options{Dir: dir})
	if err != nil {
		return err
	}
	defer func() { _ = cloud.Close() }()
	say("fake Entra ID      %s (tenant %s; app %s with certificate %s)", cloud.Entra.URL(), cloud.Entra.Tenant(), relaytest.ClientID, thumb(cloud))
	say("fake Exchange      %s (STARTTLS, AUTH XOAUTH2; %s grants the app FullAccess)", cloud.Exchange.Addr(), relaytest.Mailbox)

	cfg, log, err := demoConfig(cloud, dir, verbose, stderr)
	if err != nil {
		return err
	}
	r, err := relay.New(cfg, relay.Deps{Logger: log, HTTPClient: cloud.HTTPClient(), RootCAs: cloud.CA.Pool()})
	if err != nil {
		return err
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			fmt.Fprintln(stderr, "relay:", err)
		}
	}()
	say("relay              smtp://%s (spool %s, ack=%s)", r.SMTPAddr(), cfg.SpoolDir, cfg.Ack)

	msg := demoMessage(from, to)
	wait, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	replyText, err := sendOne(wait, r.SMTPAddr().String(), from, to, msg)
	if err != nil {
		return fmt.Errorf("sending to the relay: %w", err)
	}
	say("\napplication        MAIL FROM:<%s> RCPT TO:<%s>, %d bytes -> %s", from, to, len(msg), replyText)
	got, err := demoDelivered(wait, cloud, r)
	if err != nil {
		return err
	}
	return demoReport(say, cloud, got, msg)
}

// demoConfig is the relay's configuration for the demo: the fakes'
// settings, an ephemeral loopback listener, no admin listener, a spool
// under dir; with verbose, the daemon's console log on stderr.
func demoConfig(cloud *relaytest.Cloud, dir string, verbose bool, stderr io.Writer) (*config.Config, *zap.Logger, error) {
	flags := cloud.Settings()
	flags["listen"] = "127.0.0.1:0"
	flags["admin_listen"] = ""
	flags["spool_dir"] = dir + "/spool"
	flags["hostname"] = "o365relay-demo.localhost"
	cfg, err := config.Load(config.Input{Flags: flags})
	if err != nil {
		return nil, nil, err
	}
	log := zap.NewNop()
	if verbose {
		cfg.LogFormat = "console"
		if log, _, err = newLogger(cfg, stderr); err != nil {
			return nil, nil, err
		}
	}
	return cfg, log, nil
}

// demoDelivered waits for Exchange to have the message, or for the relay
// to give up on it.
func demoDelivered(wait context.Context, cloud *relaytest.Cloud, r *relay.Relay) (exchangetest.Message, error) {
	for len(cloud.Exchange.Messages()) == 0 {
		if failed, _ := r.Spool().ListFailed(); len(failed) > 0 {
			return exchangetest.Message{}, fmt.Errorf("Exchange refused the message: %s", failed[0].State.Final)
		}
		select {
		case <-wait.Done():
			return exchangetest.Message{}, fmt.Errorf("waiting for Exchange to receive the message: %w", wait.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return cloud.Exchange.Messages()[0], nil
}

// demoReport prints what Exchange received and fails unless it is the
// application's message byte for byte after one Received: header.
func demoReport(say func(string, ...any), cloud *relaytest.Cloud, got exchangetest.Message, msg []byte) error {
	say("\nExchange received:")
	say("  authenticated as %s (app %s) over TLS: %v", got.AuthUser, got.AppID, got.TLS)
	say("  MAIL FROM:<%s> RCPT TO:<%s>", got.MailFrom, strings.Join(got.RcptTo, ">, <"))
	say("  %d bytes, SHA-256 %x", got.Size, got.SHA256)
	same := bytes.HasSuffix(got.Data, msg) && bytes.HasPrefix(got.Data, []byte("Received: "))
	say("  the application's %d bytes arrived byte for byte after one Received: header: %v", len(msg), same)
	if i := bytes.Index(got.Data, []byte("\r\n\r\n")); i > 0 {
		say("\n%s", indent(string(got.Data[:i])))
	}
	st := cloud.Exchange.Stats()
	say("\ntoken requests to Entra ID: %d; Exchange sessions: %d (STARTTLS: %d, AUTH: %d); protocol violations: %d",
		cloud.Entra.TokenRequests(), st.Sessions, st.TLSSessions, st.Auths, len(cloud.Exchange.Violations()))
	if !same {
		return fmt.Errorf("the message did not arrive as sent (sha256 sent %x)", sha256.Sum256(msg))
	}
	return nil
}

func thumb(c *relaytest.Cloud) string {
	sum := sha256.Sum256(c.Cert.Raw)
	return fmt.Sprintf("x5t#S256 %x…", sum[:6])
}

func demoMessage(from, to string) []byte {
	return []byte("From: Demo Application <" + from + ">\r\n" +
		"To: <" + to + ">\r\n" +
		"Subject: o365relay demo\r\n" +
		"Date: " + time.Now().UTC().Format(time.RFC1123Z) + "\r\n" +
		"Message-ID: <demo." + fmt.Sprint(time.Now().UnixNano()) + "@contoso.example>\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n" +
		"Content-Transfer-Encoding: 8bit\r\n" +
		"\r\n" +
		"Hello from o365relay. This line is 8-bit: café, Grüße.\r\n" +
		".A line starting with a dot survives dot-stuffing.\r\n")
}

// sendOne is an ordinary SMTP client transaction over a real TCP connection.
func sendOne(ctx context.Context, addr, from, to string, msg []byte) (string, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	c := smtp.NewClient(conn)
	defer func() { _ = c.Close() }()
	if err := c.Hello("demo-app.localhost"); err != nil {
		return "", err
	}
	if err := c.Mail(from, nil); err != nil {
		return "", err
	}
	if err := c.Rcpt(to, nil); err != nil {
		return "", err
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	if _, err := w.Write(msg); err != nil {
		return "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	if err := c.Quit(); err != nil {
		return "", err
	}
	return "250 " + resp.StatusText, nil
}
