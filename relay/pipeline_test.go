package relay

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/relay/exchangetest"
	"github.com/o365relay/o365relay/relay/relaytest"
)

// pipeline is a whole relay in this process — listener, spool on disk,
// delivery, upstream client, token source — between a real SMTP client
// (raw bytes over loopback TCP) and the strict fakes of Entra ID and
// Exchange Online. With ack=upstream a 250 to the client means Exchange
// has the message, so a test can compare at once what went in with what
// came out.
type pipeline struct {
	cloud *relaytest.Cloud
	r     *Relay
	addr  string
	logs  *observer.ObservedLogs // warnings and errors (everything with debugLogs), for failure reports
}

// problems returns the relay's warnings and errors so far, for a failure
// message.
func (p *pipeline) problems() string {
	var b strings.Builder
	for _, e := range p.logs.All() {
		fmt.Fprintf(&b, "\n  %s %s %v", e.Level, e.Message, e.ContextMap())
	}
	return b.String()
}

// pipelineOptions shape the relay: config file text (sender rules) and
// settings beyond the defaults below.
type pipelineOptions struct {
	file     string
	settings map[string]string
	exchange func(*exchangetest.Options)
	// sendAsOwn keeps the fake mailbox to its own address, as Exchange
	// does without Send-As grants.
	sendAsOwn bool
	// debugLogs records every log entry, not only warnings and errors.
	debugLogs bool
}

// startPipeline starts one relay for tb. The fake mailbox may send as
// any address, so the envelope is the client's; pacing is off.
func startPipeline(tb testing.TB, po pipelineOptions) *pipeline {
	tb.Helper()
	cloud, err := relaytest.New(relaytest.Options{Dir: tb.TempDir(), Exchange: func(o *exchangetest.Options) {
		mb := o.Mailboxes[relaytest.Mailbox]
		mb.SendAsAny = !po.sendAsOwn
		o.Mailboxes[relaytest.Mailbox] = mb
		if po.exchange != nil {
			po.exchange(o)
		}
	}})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := cloud.Close(); err != nil {
			tb.Error(err)
		}
	})
	flags := cloud.Settings()
	for k, v := range map[string]string{
		"listen": "127.0.0.1:0", "admin_listen": "", "spool_dir": tb.TempDir(), "hostname": "relay.pipeline",
		"ack": "upstream", "mailbox_rate": "0",
		// Fuzzing sends more than a day's 10,000 recipients.
		"mailbox_daily_recipients": "0",
	} {
		flags[k] = v
	}
	for k, v := range po.settings {
		flags[k] = v
	}
	in := config.Input{Flags: flags}
	if po.file != "" {
		in.File = filepath.Join(tb.TempDir(), "relay.yaml")
		if err := os.WriteFile(in.File, []byte(po.file), 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	cfg, err := config.Load(in)
	if err != nil {
		tb.Fatal(err)
	}
	level := zap.WarnLevel
	if po.debugLogs {
		level = zap.DebugLevel
	}
	core, logs := observer.New(level)
	r, err := New(cfg, Deps{Logger: zap.New(core), HTTPClient: cloud.HTTPClient(), RootCAs: cloud.CA.Pool(), WatchInterval: time.Hour})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Error(err)
		}
	})
	return &pipeline{cloud: cloud, r: r, addr: r.SMTPAddr().String(), logs: logs}
}

// smtpClient is a raw SMTP dialog: what a client sends, byte for byte.
type smtpClient struct {
	c net.Conn
	r *bufio.Reader
}

func (p *pipeline) dial(tb testing.TB) *smtpClient {
	tb.Helper()
	c, err := net.DialTimeout("tcp", p.addr, 10*time.Second)
	if err != nil {
		tb.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	sc := &smtpClient{c: c, r: bufio.NewReader(c)}
	if _, err := sc.reply(); err != nil {
		tb.Fatal(err)
	}
	return sc
}

func (sc *smtpClient) close() { _ = sc.c.Close() }

// reply reads one reply and returns its last line.
func (sc *smtpClient) reply() (string, error) {
	for {
		line, err := sc.r.ReadString('\n')
		if err != nil {
			return "", fmt.Errorf("reading a reply: %w (got %q)", err, line)
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 4 || line[3] != '-' {
			return line, nil
		}
	}
}

// cmd sends raw bytes (the caller adds CRLF) and reads one reply.
func (sc *smtpClient) cmd(raw string) (string, error) {
	if _, err := sc.c.Write([]byte(raw)); err != nil {
		return "", err
	}
	return sc.reply()
}

// mustCmd is cmd that fails the test on a network error.
func (sc *smtpClient) mustCmd(tb testing.TB, raw string) string {
	tb.Helper()
	rep, err := sc.cmd(raw)
	if err != nil {
		tb.Fatalf("after %q: %v", raw, err)
	}
	return rep
}
