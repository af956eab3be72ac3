package main

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/o365relay/o365relay/relay/relaytest"
)

// The command lines real callers use, as they run them.
func TestSendmailArgs(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want sendmailOpts
	}{
		// Debian's cron (MAILARGS "%s -FCronDaemon -i -B8BITMIME -oem %s").
		{[]string{"-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"}, sendmailOpts{fullName: "CronDaemon", ignoreDots: true, eightBit: true, recipients: []string{"root"}}},
		// cronie.
		{[]string{"-FCronDaemon", "-i", "-odi", "-oem", "-oi", "-t", "-f", "root"}, sendmailOpts{fullName: "CronDaemon", ignoreDots: true, extract: true, from: "root"}},
		// PHP's default sendmail_path, mdadm, logwatch.
		{[]string{"-t", "-i"}, sendmailOpts{extract: true, ignoreDots: true}},
		// unattended-upgrades, and grouped flags.
		{[]string{"-oi", "-t"}, sendmailOpts{extract: true, ignoreDots: true}},
		{[]string{"-ti", "-fapp@contoso.example", "--", "-odd@example.com"}, sendmailOpts{extract: true, ignoreDots: true, from: "app@contoso.example", recipients: []string{"-odd@example.com"}}},
		// git send-email, bsd-mailx.
		{[]string{"-i", "a@example.com", "b@example.com"}, sendmailOpts{ignoreDots: true, recipients: []string{"a@example.com", "b@example.com"}}},
		{[]string{"-r", "x@example.com", "-oA/tmp/aliases", "-O", "AliasFile=/etc/other", "-C", "/etc/o365relay/relay.yaml", "-v", "-N", "never", "-R", "hdrs", "-V", "envid", "u@example.com"},
			sendmailOpts{from: "x@example.com", aliasFile: "/etc/other", configFile: "/etc/o365relay/relay.yaml", verbose: true, recipients: []string{"u@example.com"}}},
		{[]string{"-bi"}, sendmailOpts{mode: "i"}},
	} {
		got, err := parseSendmailArgs(tc.args)
		if tc.want.mode == "" {
			tc.want.mode = "m"
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%q:\n got %+v, %v\nwant %+v", tc.args, got, err, tc.want)
		}
	}
	for _, bad := range [][]string{{"-bs"}, {"-bp"}, {"-f"}, {"-x"}, {"--verbose"}} {
		if _, err := parseSendmailArgs(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// Replies map to sendmail's exit codes.
func TestSendmailExitCodes(t *testing.T) {
	for _, tc := range []struct {
		stage string
		code  int
		want  int
	}{
		{"MAIL FROM:<a@b>", 550, exNoPerm}, {"RCPT TO", 550, exNoUser}, {"end of DATA", 554, exDataErr},
		{"end of DATA", 552, exDataErr}, {"MAIL FROM:<a@b>", 452, exTempFail}, {"end of DATA", 451, exTempFail}, {"EHLO", 554, exUnavailable},
	} {
		err := smtpFail(tc.stage, &smtp.SMTPError{Code: tc.code, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "no"})
		var f *sendmailFail
		if !errors.As(err, &f) || f.code != tc.want {
			t.Errorf("%s %d: %v, want exit %d", tc.stage, tc.code, err, tc.want)
		}
	}
	if f := smtpFail("DATA", errors.New("broken pipe")).(*sendmailFail); f.code != exTempFail {
		t.Errorf("a broken connection exits %d", f.code)
	}
}

// Local names go through the aliases file; one without an entry is an
// error that says what to add.
func TestSendmailAliases(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "aliases")
	if err := os.WriteFile(file, []byte("# Debian's default\npostmaster: root\nroot: ops@contoso.example,\n  oncall@contoso.example\nwww-data: root\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := resolveRecipients([]string{"www-data", "postmaster, boss@contoso.example", "OPS@contoso.example"}, file)
	if err != nil || !reflect.DeepEqual(got, []string{"ops@contoso.example", "oncall@contoso.example", "boss@contoso.example"}) {
		t.Errorf("got %q, %v", got, err)
	}
	_, err = resolveRecipients([]string{"backup"}, file)
	if f := (*sendmailFail)(nil); !errors.As(err, &f) || f.code != exNoUser || !strings.Contains(err.Error(), "backup: you@example.com") {
		t.Errorf("unknown local name: %v", err)
	}
	if err := os.WriteFile(file, []byte("default: admin@contoso.example\nbad: |/usr/bin/procmail\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := resolveRecipients([]string{"nobody"}, file); err == nil || !strings.Contains(err.Error(), "program or file") {
		t.Errorf("a pipe alias: %v", err)
	}
}

// Header handling: Bcc removed, missing From/Date/Message-ID added, the
// rest byte for byte; a lone dot ends the input unless -i.
func TestSendmailMessage(t *testing.T) {
	in := "From root  Mon Jan  1 00:00:00 2026\nTo: a@example.com,\n  b@example.com\nBcc: hidden@example.com\nSubject: x\n\nbody\n.\nafter\n"
	br := bufio.NewReader(strings.NewReader(in))
	h, err := readHeader(br, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := append(h.addresses("To"), h.addresses("Bcc")...); !reflect.DeepEqual(got, []string{"a@example.com", "b@example.com", "hidden@example.com"}) {
		t.Errorf("addresses %q", got)
	}
	h.complete("app@example.com", "Cron Daemon", "host.example")
	var body bytes.Buffer
	if _, err := body.ReadFrom(&bodyReader{r: br}); err != nil {
		t.Fatal(err)
	}
	out := string(h.bytes()) + body.String()
	for _, want := range []string{"To: a@example.com,\n  b@example.com\nSubject: x\n", "From: \"Cron Daemon\" <app@example.com>\n", "\nDate: ", "\nMessage-ID: <", "\n\nbody\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("message lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "Bcc") || strings.Contains(out, "hidden") || strings.Contains(out, "after") || strings.HasPrefix(out, "From root") {
		t.Errorf("message:\n%s", out)
	}
}

// sendmailE2E is a relay whose sender rule lets any sender through as the
// mailbox with the From: header rewritten, as a VM that relays cron's and
// scripts' mail would have it.
func sendmailE2E(t *testing.T) (*e2e, []string) {
	t.Helper()
	cfg := writeFile(t, t.TempDir(), "relay.yaml", []byte("senders:\n  - sender: \"*\"\n    rewrite: envelope+from\n"))
	e := startE2E(t, nil, "O365RELAY_MAILBOX="+relaytest.Mailbox)
	e.relay.stop()
	p := startRelay(t, e.env, e.smtp, "serve", "--config", cfg)
	e.relay = p
	return e, []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "O365RELAY_LISTEN=" + e.smtp}
}

// cron (MAILTO=ops@…) and PHP's mail() (sendmail_path = sendmail -t -i)
// through the built binary, as they invoke it, to the fake Exchange.
func TestE2ESendmail(t *testing.T) {
	t.Parallel()
	e, env := sendmailE2E(t)
	sendmailBin := filepath.Join(t.TempDir(), "sendmail")
	if err := os.Symlink(binPath, sendmailBin); err != nil {
		t.Fatal(err)
	}
	// Debian cron's message and command line, with LF line endings.
	cronMsg := "From: root (Cron Daemon)\nTo: ops@fabrikam.example\nSubject: Cron <root@vm> /usr/local/bin/backup\nMIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit\nX-Cron-Env: <SHELL=/bin/sh>\n\nbackup: 3 files\n.\n..dots stay\n"
	if out, code := runToolWith(t, env, []byte(cronMsg), sendmailBin, "-FCronDaemon", "-i", "-B8BITMIME", "-oem", "ops@fabrikam.example"); code != 0 {
		t.Fatalf("cron-style sendmail: exit %d\n%s", code, out)
	}
	// PHP's mail("dev@fabrikam.example", "Report", "Line 1\nLine 2", "From: relay@contoso.example"):
	// its headers, then the body; sendmail_path "sendmail -t -i".
	phpMsg := "To: dev@fabrikam.example\nSubject: Report\nFrom: relay@contoso.example\nBcc: audit@fabrikam.example\n\nLine 1\nLine 2\n"
	if out, code := runToolWith(t, env, []byte(phpMsg), binPath, "sendmail", "-t", "-i"); code != 0 {
		t.Fatalf("PHP-style sendmail: exit %d\n%s", code, out)
	}
	msgs := e.waitMessages(2)
	byRcpt := map[string]string{}
	for _, m := range msgs {
		byRcpt[strings.Join(m.RcptTo, ",")] = string(m.Data)
		if m.MailFrom != relaytest.Mailbox {
			t.Errorf("MAIL FROM %s reached Exchange", m.MailFrom)
		}
	}
	cron := byRcpt["ops@fabrikam.example"]
	for _, want := range []string{"Subject: Cron <root@vm> /usr/local/bin/backup\r\n", "X-Cron-Env: <SHELL=/bin/sh>\r\n", "\r\n\r\nbackup: 3 files\r\n.\r\n..dots stay\r\n", "Message-ID: <", "Date: ", "From: <" + relaytest.Mailbox + ">\r\n"} {
		if !strings.Contains(cron, want) {
			t.Errorf("cron's message lacks %q:\n%s", want, cron)
		}
	}
	php := byRcpt["dev@fabrikam.example,audit@fabrikam.example"]
	if !strings.Contains(php, "To: dev@fabrikam.example\r\nSubject: Report\r\nFrom: <relay@contoso.example>\r\n") || !strings.HasSuffix(php, "\r\n\r\nLine 1\r\nLine 2\r\n") || strings.Contains(php, "Bcc") {
		t.Errorf("PHP's message (recipients %q):\n%s", byRcpt, php)
	}
}

// PHP's own mail() with sendmail_path pointing at the binary (php-cli from
// Debian; CI installs it).
func TestE2ESendmailPHP(t *testing.T) {
	t.Parallel()
	php := requireTool(t, "php")
	e, env := sendmailE2E(t)
	script := `$ok = mail("dev@fabrikam.example", "Report from PHP", "Line 1\nLine 2\n", "From: relay@contoso.example"); exit($ok ? 0 : 1);`
	out, code := runToolWith(t, env, nil, php, "-n", "-d", "sendmail_path="+binPath+" sendmail -t -i", "-r", script)
	if code != 0 {
		t.Fatalf("php mail(): exit %d\n%s", code, out)
	}
	m := e.waitMessages(1)[0]
	if !reflect.DeepEqual(m.RcptTo, []string{"dev@fabrikam.example"}) || !strings.Contains(string(m.Data), "Subject: Report from PHP\r\n") || !strings.Contains(string(m.Data), "\r\n\r\nLine 1\r\nLine 2\r\n") {
		t.Errorf("Exchange got %q:\n%s", m.RcptTo, m.Data)
	}
	// mail() returns false when sendmail fails: the relay is gone.
	e.relay.stop()
	out, code = runToolWith(t, env, nil, php, "-n", "-d", "sendmail_path="+binPath+" sendmail -t -i", "-r", script)
	if code != 1 || !strings.Contains(out, "the relay is not running at "+e.smtp) {
		t.Errorf("php mail() with the relay stopped: exit %d\n%s", code, out)
	}
}

// With no relay listening: exit 75 (EX_TEMPFAIL) and a message that says
// so and how to start it; a local name without an alias: 67; no
// recipient: 64.
func TestE2ESendmailErrors(t *testing.T) {
	t.Parallel()
	addr := freePort(t)
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "O365RELAY_LISTEN=" + addr}
	out, code := runToolWith(t, env, []byte("Subject: x\n\nbody\n"), binPath, "sendmail", "ops@fabrikam.example")
	if code != exTempFail || !strings.Contains(out, "the relay is not running at "+addr) || !strings.Contains(out, "systemctl start o365relay") {
		t.Errorf("relay down: exit %d\n%s", code, out)
	}
	aliases := writeFile(t, t.TempDir(), "aliases", []byte("postmaster: root\n"))
	out, code = runToolWith(t, env, []byte("Subject: x\n\nbody\n"), binPath, "sendmail", "-oA"+aliases, "root")
	if code != exNoUser || !strings.Contains(out, "root: you@example.com") {
		t.Errorf("unaliased root: exit %d\n%s", code, out)
	}
	if out, code = runToolWith(t, env, []byte("Subject: x\n\nbody\n"), binPath, "sendmail", "-t"); code != exUsage {
		t.Errorf("no recipients: exit %d\n%s", code, out)
	}
	if out, code = runToolWith(t, env, nil, binPath, "sendmail", "-bs"); code != exUsage {
		t.Errorf("-bs: exit %d\n%s", code, out)
	}
}

// Whatever arrives on stdin: no panic; Bcc: never reaches the relay; the
// added fields are there once; with -i the body passes byte for byte (it
// is the rest of the input), without it no lone-dot line gets through.
func FuzzSendmailMessage(f *testing.F) {
	f.Add([]byte("To: a@example.com\nBcc: b@example.com\nSubject: x\n\nbody\n.\nafter\n"), false)
	f.Add([]byte("From root  Mon Jan  1 00:00:00 2026\r\nTo: a@example.com,\r\n  b@example.com\r\n\r\nbody\r\n"), true)
	f.Add([]byte("no header at all\n\n.\n..\n"), true)
	f.Add([]byte("Subject: only\n"), false)
	f.Fuzz(func(t *testing.T, in []byte, ignoreDots bool) {
		br := bufio.NewReaderSize(bytes.NewReader(in), 64<<10)
		h, err := readHeader(br, ignoreDots)
		if err != nil {
			return
		}
		h.complete("app@example.com", "Name", "host.example")
		head := h.bytes()
		var body bytes.Buffer
		if _, err := body.ReadFrom(&bodyReader{r: br, ignoreDots: ignoreDots, done: h.done}); err != nil {
			t.Fatal(err)
		}
		for _, f := range h.fields {
			if strings.EqualFold(fieldName(f), "Bcc") {
				t.Fatalf("Bcc kept: %q", f)
			}
		}
		for _, name := range []string{"From", "Date", "Message-ID"} {
			if len(h.values(name)) == 0 {
				t.Fatalf("no %s in %q", name, head)
			}
		}
		if ignoreDots && !h.done && !bytes.HasSuffix(in, body.Bytes()) {
			t.Fatalf("body %q is not the rest of the input %q", body.Bytes(), in)
		}
		if !ignoreDots {
			for _, l := range strings.Split(body.String(), "\n") {
				if strings.TrimRight(l, "\r") == "." {
					t.Fatalf("a lone dot got through: %q", body.String())
				}
			}
		}
	})
}
