package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/user"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/o365relay/o365relay/config"
)

// The sendmail entry point: cron's MAILTO, PHP's mail(), mdadm, smartd,
// logwatch, unattended-upgrades and most scripts run /usr/sbin/sendmail
// instead of speaking SMTP. Installed under that name (the packages'
// alternative, or a symlink), o365relay reads the message from stdin and
// submits it over SMTP to the local relay's listen address, like msmtp-mta
// or Postfix's sendmail, and exits with sendmail's codes. It never queues
// by itself: when the relay does not answer it says so and exits 75
// (EX_TEMPFAIL), the code that tells a caller to try again later.
//
// Where the relay listens: O365RELAY_LISTEN in the environment, else in the
// systemd env file /etc/o365relay/o365relay.env when this user can read it,
// else in the YAML file given with -C, else the listen setting's default
// (config's).

const (
	sendmailEnvFile   = "/etc/o365relay/o365relay.env"
	sendmailAliases   = "/etc/aliases"
	maxSendmailHeader = 4 << 20 // a header block beyond this is not a message
	sendmailTimeout   = 10 * time.Minute
)

const sendmailUsage = `Usage: o365relay sendmail [-t] [-i] [-f SENDER] [-F NAME] [-C FILE] [-v] [RECIPIENT ...] < message
       (also as /usr/sbin/sendmail)

Submits the message on stdin to the running relay over SMTP, as sendmail does.
  -t            also send to the To:, Cc: and Bcc: addresses (Bcc: is removed)
  -i, -oi       a line with a single dot does not end the message
  -f SENDER     envelope sender (also -r); default: the From: address, else
                the relay's mailbox setting, else USER@HOST
  -F NAME       the sender's name, for a From: header added when there is none
  -C FILE       the relay's YAML configuration (for listen and mailbox)
  -oAFILE       aliases file for local names like root (default /etc/aliases)
  -v            report each step on stderr
  -bm           deliver (the default); -bi does nothing (no alias database)
Other sendmail options (-oem, -odi, -B8BITMIME, -N, -R, -V, -X, -L) are
accepted and ignored. Missing From:, Date: and Message-ID: headers are added.
Exit codes (sysexits): 0 handed to the relay, 64 usage, 65 message refused,
67 recipient refused or unknown, 69 refused, 75 relay not running or
temporary failure (try again), 77 sender refused, 78 configuration.
`

func runSendmail(_ context.Context, args []string, stdout, stderr io.Writer) int {
	for _, a := range args {
		if a == "--help" || a == "-h" {
			_, _ = io.WriteString(stdout, sendmailUsage)
			return 0
		}
		if a == "--" {
			break
		}
	}
	o, err := parseSendmailArgs(args)
	if err != nil {
		fmt.Fprintf(stderr, "sendmail: %v\n\n%s", err, sendmailUsage)
		return exUsage
	}
	if o.mode == "i" {
		return 0 // newaliases: /etc/aliases is read as it is, there is no database
	}
	return sendmail(o, os.Stdin, stderr)
}

// sendmailFail is an error with its exit code.
type sendmailFail struct {
	code int
	msg  string
}

func (f *sendmailFail) Error() string { return f.msg }

func failf(code int, format string, args ...any) error {
	return &sendmailFail{code, fmt.Sprintf(format, args...)}
}

func sendmail(o sendmailOpts, stdin io.Reader, stderr io.Writer) int {
	err := submit(o, stdin, stderr)
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "sendmail:", err)
	var f *sendmailFail
	if errors.As(err, &f) {
		return f.code
	}
	return exSoftware
}

func submit(o sendmailOpts, stdin io.Reader, stderr io.Writer) error {
	listen, mailbox, err := sendmailTarget(o.configFile)
	if err != nil {
		return failf(exConfig, "%v", err)
	}
	in := bufio.NewReaderSize(stdin, 64<<10)
	hdr, err := readHeader(in, o.ignoreDots)
	if err != nil {
		return err
	}
	rcpts := append([]string(nil), o.recipients...)
	if o.extract {
		for _, k := range []string{"To", "Cc", "Bcc"} {
			rcpts = append(rcpts, hdr.addresses(k)...)
		}
	}
	aliasFile := o.aliasFile
	if aliasFile == "" {
		aliasFile = sendmailAliases
	}
	rcpts, err = resolveRecipients(rcpts, aliasFile)
	if err != nil {
		return err
	}
	if len(rcpts) == 0 {
		return failf(exUsage, "no recipients: name them as arguments, or use -t to take them from To:, Cc: and Bcc:")
	}
	sender := envelopeSender(o.from, hdr, mailbox)
	hdr.complete(sender, o.fullName, hostname())
	return deliver(o, dialAddr(listen), sender, rcpts, hdr, &bodyReader{r: in, ignoreDots: o.ignoreDots, done: hdr.done}, stderr)
}

// sendmailTarget finds the relay's listen address and mailbox setting.
func sendmailTarget(configFile string) (listen, mailbox string, err error) {
	// Without -C this is config's defaults: the daemon's own.
	cfg, err := config.Load(config.Input{File: configFile})
	if err != nil {
		return "", "", fmt.Errorf("-C %s: %v", configFile, err)
	}
	listen, mailbox = cfg.Listen, cfg.Mailbox
	if env, err := readEnvFile(sendmailEnvFile); err == nil {
		for _, kv := range env {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "O365RELAY_LISTEN":
				listen = v
			case "O365RELAY_MAILBOX":
				mailbox = v
			}
		}
	}
	if v := os.Getenv("O365RELAY_LISTEN"); v != "" {
		listen = v
	}
	if v := os.Getenv("O365RELAY_MAILBOX"); v != "" {
		mailbox = v
	}
	return listen, mailbox, nil
}

// dialAddr turns a listen address into one to connect to: a wildcard
// listener is reached on loopback.
func dialAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return net.JoinHostPort(host, port)
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "localhost"
	}
	return h
}

// envelopeSender picks MAIL FROM: -f; else the From: header's address (so
// the relay's sender rules route by it, and Exchange sees one address in
// both places); else the relay's mailbox; else USER@HOST, as sendmail
// does, which Exchange will refuse unless the mailbox may send as it.
func envelopeSender(from string, hdr *header, mailbox string) string {
	if from != "" {
		return from
	}
	if addrs := hdr.addresses("From"); len(addrs) == 1 && strings.Contains(addrs[0], "@") {
		return addrs[0]
	}
	if mailbox != "" {
		return mailbox
	}
	name := "root"
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	return name + "@" + hostname()
}

// deliver runs the SMTP transaction. All recipients or none: if the relay
// refuses one, the message is not sent to the others, so that the caller's
// retry cannot deliver twice.
func deliver(o sendmailOpts, addr, sender string, rcpts []string, hdr *header, body io.Reader, stderr io.Writer) error {
	say := func(format string, args ...any) {
		if o.verbose {
			fmt.Fprintf(stderr, "sendmail: "+format+"\n", args...)
		}
	}
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return failf(exTempFail, "the relay is not running at %s (%v): start it (systemctl start o365relay; systemctl status o365relay says why it stopped), or set O365RELAY_LISTEN to where it listens. The message was not sent.", addr, unwrapNet(err))
	}
	c := smtp.NewClient(conn)
	defer func() { _ = c.Close() }() // after QUIT, or on failure: nothing to report
	c.CommandTimeout = time.Minute
	c.SubmissionTimeout = sendmailTimeout
	if err := c.Hello(hostname()); err != nil {
		return smtpFail("EHLO", err)
	}
	say("connected to %s", addr)
	mo := &smtp.MailOptions{}
	if ok, _ := c.Extension("8BITMIME"); ok && o.eightBit {
		mo.Body = smtp.Body8BitMIME
	}
	if ok, _ := c.Extension("SMTPUTF8"); ok && !isASCII(sender+strings.Join(rcpts, "")) {
		mo.UTF8 = true
	}
	if err := c.Mail(sender, mo); err != nil {
		return smtpFail("MAIL FROM:<"+sender+">", err)
	}
	say("sender %s accepted", sender)
	var refused []string
	var firstErr error
	for _, r := range rcpts {
		if err := c.Rcpt(r, nil); err != nil {
			refused = append(refused, r+": "+err.Error())
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		say("recipient %s accepted", r)
	}
	if firstErr != nil {
		_ = c.Reset() // nothing was sent; the connection is closed below
		f := smtpFail("RCPT TO", firstErr).(*sendmailFail)
		if f.code != exTempFail {
			f.code = exNoUser
		}
		f.msg = fmt.Sprintf("the relay refused %d of %d recipient(s), so the message was sent to none: %s", len(refused), len(rcpts), strings.Join(refused, "; "))
		return f
	}
	w, err := c.Data()
	if err != nil {
		return smtpFail("DATA", err)
	}
	if _, err := w.Write(hdr.bytes()); err != nil {
		return smtpFail("DATA", err)
	}
	if _, err := io.Copy(w, body); err != nil {
		var f *sendmailFail
		if errors.As(err, &f) {
			return err
		}
		return smtpFail("DATA", err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return smtpFail("end of DATA", err)
	}
	say("accepted: %s", resp.StatusText)
	if err := c.Quit(); err != nil {
		say("QUIT: %v (the message was accepted)", err)
	}
	return nil
}

func unwrapNet(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}

// smtpFail maps the relay's reply to sendmail's exit code: 4xx is a
// temporary failure; a 5xx at MAIL is the sender's (no permission), at
// RCPT the recipient's, after the data the message's.
func smtpFail(stage string, err error) error {
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		return failf(exTempFail, "%s: %v (the connection to the relay failed; the message was not sent)", stage, err)
	}
	code := exUnavailable
	switch {
	case se.Code >= 400 && se.Code < 500:
		code = exTempFail
	case strings.HasPrefix(stage, "MAIL"):
		code = exNoPerm
	case strings.HasPrefix(stage, "RCPT"):
		code = exNoUser
	case stage == "end of DATA" || stage == "DATA":
		code = exDataErr
	}
	return failf(code, "%s: the relay answered %d %d.%d.%d %s", stage, se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func newMessageID(host string) string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read does not fail
	return "<" + hex.EncodeToString(b[:]) + "." + time.Now().UTC().Format("20060102150405") + "@" + host + ">"
}
