package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/reply"
	"github.com/o365relay/o365relay/relay/rewrite"
	"github.com/o365relay/o365relay/relay/smtpd"
	"github.com/o365relay/o365relay/relay/upstream"
	"github.com/o365relay/o365relay/token"
)

// runSend sends one test message straight to Exchange Online through the
// configured path (token, connect, STARTTLS, AUTH as the mailbox, MAIL,
// RCPT, DATA) on one connection, reporting each step. It bypasses the spool:
// it is a diagnosis, and the user sees Exchange's reply as it is.
func runSend(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("send", "send --to B [--from A] [--subject S] [--body-file F] [--config FILE] [--SETTING VALUE ...]\n\n"+
		"Sends one test message to Exchange Online as the configured mailbox, on one\n"+
		"connection, and reports each step: token, connect, TLS, AUTH, and Exchange's\n"+
		"reply to the message. Does not use the spool.", stdout, stderr)
	from := fs.String("from", "", "envelope sender and From: header (default: the mailbox)")
	to := fs.String("to", "", "recipient(s), comma-separated (required)")
	subject := fs.String("subject", "o365relay test message", "Subject: header")
	bodyFile := fs.String("body-file", "", "file with the message text (default: a short text naming this host and the time)")
	cfg, _, code := loadCommand(fs, args, false, stderr)
	if cfg == nil {
		return code
	}
	rcpts := splitRcpts(*to)
	if len(rcpts) == 0 {
		fmt.Fprintln(stderr, "o365relay send: --to is required")
		fs.Usage()
		return 2
	}
	if err := cfg.CheckDaemon(); err != nil {
		printConfigError(stderr, err)
		return 2
	}
	plan, code := planSend(cfg, sendSender(cfg, *from), rcpts, *subject, *bodyFile, stdout, stderr)
	if plan == nil {
		return code
	}
	return probeSend(ctx, cfg, plan, stdout, stderr)
}

// splitRcpts reads --to: comma-separated, blanks dropped.
func splitRcpts(to string) []string {
	var rcpts []string
	for _, r := range strings.Split(to, ",") {
		if r = strings.TrimSpace(r); r != "" {
			rcpts = append(rcpts, r)
		}
	}
	return rcpts
}

// sendSender is --from, or else the mailbox, or else the first mailbox the
// sender rules name.
func sendSender(cfg *config.Config, from string) string {
	if from != "" {
		return from
	}
	if cfg.Mailbox != "" {
		return cfg.Mailbox
	}
	if mbs := cfg.Mailboxes(); len(mbs) > 0 {
		return mbs[0]
	}
	return ""
}

// sendPlan is the test message as the daemon would forward it.
type sendPlan struct {
	sender  string // as given (--from or the default)
	envFrom string // MAIL FROM after the rule's rewrite
	mailbox string
	rewrite config.Rewrite
	rcpts   []string
	msg     []byte
}

// planSend builds the message and applies the daemon's routing and
// rewriting, so the test goes the way the application's mail would
// (config.Route, the listener's refusal, rewrite.From). A nil plan comes
// with the exit code.
func planSend(cfg *config.Config, sender string, rcpts []string, subject, bodyFile string, stdout, stderr io.Writer) (*sendPlan, int) {
	mailbox, ok := cfg.Route(sender)
	if !ok {
		fmt.Fprintf(stdout, "✘ route: %v\n", smtpd.SenderRefused(sender))
		return nil, 1
	}
	p := &sendPlan{sender: sender, envFrom: sender, mailbox: mailbox, rewrite: cfg.RewriteFor(sender), rcpts: rcpts}
	body, err := sendBody(bodyFile, cfg.Hostname)
	if err != nil {
		return nil, exitErr(stderr, err)
	}
	p.msg = sendMessage(sender, rcpts, subject, body)
	if p.rewrite != config.RewriteNone {
		p.envFrom = mailbox
	}
	if p.rewrite == config.RewriteEnvelopeFrom {
		if p.msg, err = io.ReadAll(rewrite.From(bytes.NewReader(p.msg), mailbox)); err != nil {
			return nil, exitErr(stderr, err)
		}
	}
	return p, 0
}

// probeSend sends the plan on one upstream connection without a pool and
// reports each step.
func probeSend(ctx context.Context, cfg *config.Config, p *sendPlan, stdout, stderr io.Writer) int {
	src, err := newTokenSource(cfg, zap.NewNop())
	if err != nil {
		if ce := (*config.Error)(nil); errors.As(err, &ce) {
			printConfigError(stderr, err)
			return 2
		}
		return exitErr(stderr, err)
	}
	defer func() {
		if err := src.Close(); err != nil {
			fmt.Fprintln(stderr, "o365relay: closing token source:", err)
		}
	}()
	up, err := upstream.New(upstream.Options{Addr: cfg.Upstream, Tokens: src, HelloName: cfg.Hostname, PoolDisabled: true,
		ConnectTimeout: 30 * time.Second, CommandTimeout: time.Minute, DataTimeout: 5 * time.Minute})
	if err != nil {
		return exitErr(stderr, err)
	}
	defer func() {
		if err := up.Close(); err != nil {
			fmt.Fprintln(stderr, "o365relay: closing upstream client:", err)
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	env := &envelope.Envelope{ID: envelope.NewID(time.Now()), From: p.envFrom, To: p.rcpts, Mailbox: p.mailbox, Received: time.Now(),
		Size: int64(len(p.msg)), SMTPUTF8: !ascii(p.envFrom + strings.Join(p.rcpts, ""))}
	fmt.Fprintf(stdout, "✔ route: sender <%s> → mailbox %s (rewrite %s)\n", p.sender, p.mailbox, p.rewrite)
	fmt.Fprintf(stdout, "sending %d bytes from <%s> to <%s> via %s as %s\n", len(p.msg), p.envFrom, strings.Join(p.rcpts, ">, <"), cfg.Upstream, p.mailbox)
	res, perr := up.ProbeSend(ctx, env, bytes.NewReader(p.msg))
	return reportSend(stdout, cfg, res, perr, env, src)
}

// reportSend prints each step of the probe, with a hint for a failed one,
// and each refused recipient; the exit code is 0 only if all was accepted.
func reportSend(stdout io.Writer, cfg *config.Config, res *upstream.ProbeResult, perr error, env *envelope.Envelope, src *token.EntraSource) int {
	for _, st := range res.Steps {
		if st.Err != nil {
			fmt.Fprintf(stdout, "✘ %s: %s\n", st.Name, oneLineErr(st.Err))
			printSendHint(stdout, cfg, st.Err)
			continue
		}
		fmt.Fprintf(stdout, "✔ %s: %s\n", st.Name, sendStepText(st, res, cfg, env, src))
	}
	if perr != nil {
		fmt.Fprintln(stdout, "the message was not sent; o365relay doctor checks every setup step")
		return 1
	}
	if res.Result != nil && len(res.Result.Rejected) > 0 {
		for r, e := range res.Result.Rejected {
			fmt.Fprintf(stdout, "✘ rcpt %s: %s\n", r, e.Error())
		}
		return 1
	}
	return 0
}

func sendStepText(st upstream.ProbeStep, res *upstream.ProbeResult, cfg *config.Config, env *envelope.Envelope, src *token.EntraSource) string {
	took := st.Duration.Round(time.Millisecond)
	switch st.Name {
	case upstream.StepConnect:
		return fmt.Sprintf("%s (%s)", res.Addr, took)
	case upstream.StepTLS:
		return fmt.Sprintf("STARTTLS, %s, certificate %s issued by %s verified for %s (%s)", res.TLSVersion, res.PeerSubject, res.PeerIssuer, res.ServerName, took)
	case upstream.StepToken:
		exp := src.Status().ExpiresOn
		return fmt.Sprintf("from %s, expires %s (%s)", tokenIssuer(cfg), exp.UTC().Format(time.RFC3339), took)
	case upstream.StepAuth:
		return fmt.Sprintf("AUTH XOAUTH2 as %s accepted (%s)", env.Mailbox, took)
	case upstream.StepSend:
		r := ""
		if res.Result != nil {
			r = res.Result.Reply
		}
		return fmt.Sprintf("MAIL FROM:<%s> RCPT TO:<%s> DATA: 250 %s (%s)", env.From, strings.Join(env.To, ">, <"), r, took)
	case upstream.StepQuit:
		return "QUIT"
	}
	return took.String()
}

func oneLineErr(e *reply.Error) string {
	if ee := token.AsEntraError(e); ee != nil {
		return ee.Error()
	}
	return strings.Join(strings.Fields(e.Error()), " ")
}

func printSendHint(w io.Writer, cfg *config.Config, e *reply.Error) {
	if ee := token.AsEntraError(e); ee != nil {
		ids := token.SetupIDs{TenantID: cfg.TenantID, ClientID: cfg.ClientID, AuthorityHost: cfg.AuthorityHost, CertificatePath: cfg.CertificatePath}
		fix := token.Fix(ee.Code(), ids)
		if m := managedIdentityOf(cfg); m != nil && ee.Code() == 0 {
			fix = token.ManagedIdentityFix(e, *m)
		}
		if fix != "" {
			for _, l := range strings.Split(fix, "\n") {
				fmt.Fprintln(w, "    "+l)
			}
		}
		return
	}
	if h := upstream.AuthHint(e); h != "" {
		fmt.Fprintln(w, "    "+h)
	}
}

func sendBody(path, host string) ([]byte, error) {
	if path == "" {
		return []byte(fmt.Sprintf("This is a test message sent by o365relay send from %s at %s.\n", host, time.Now().UTC().Format(time.RFC1123Z))), nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--body-file: %w", err)
	}
	return b, nil
}

// sendMessage builds a plain-text message with CRLF line endings (RFC 5322
// §2.1; the body file may have Unix ones).
func sendMessage(from string, to []string, subject string, body []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: <%s>\r\n", from)
	fmt.Fprintf(&b, "To: <%s>\r\n", strings.Join(to, ">, <"))
	fmt.Fprintf(&b, "Subject: %s\r\n", strings.Join(strings.Fields(subject), " "))
	fmt.Fprintf(&b, "Date: %s\r\n", time.Now().Format(time.RFC1123Z))
	fmt.Fprintf(&b, "Message-ID: <send.%d@o365relay.invalid>\r\n", time.Now().UnixNano())
	b.WriteString("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n")
	text := strings.ReplaceAll(strings.ReplaceAll(string(body), "\r\n", "\n"), "\r", "\n")
	if !strings.HasSuffix(text, "\n") {
		text += "\n"
	}
	b.WriteString(strings.ReplaceAll(text, "\n", "\r\n"))
	return b.Bytes()
}

func ascii(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
