package main

import (
	"bytes"
	"strings"
	"testing"
)

// The README's first command: the demo relays one message through the
// strict fakes and says so.
func TestDemo(t *testing.T) {
	t.Parallel()
	var out, errb bytes.Buffer
	if code := run([]string{"demo"}, &out, &errb); code != 0 {
		t.Fatalf("demo exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	for _, want := range []string{
		"authenticated as relay@contoso.example", "over TLS: true",
		"arrived byte for byte after one Received: header: true",
		"token requests to Entra ID: 1", "protocol violations: 0",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out.String())
		}
	}
}

// A sender Exchange does not let the mailbox use makes the demo fail with
// Exchange's reason, not hang.
func TestDemoReportsRefusal(t *testing.T) {
	t.Parallel()
	var out, errb bytes.Buffer
	if code := run([]string{"demo", "--from", "other@contoso.example"}, &out, &errb); code != 1 {
		t.Fatalf("demo exit %d, want 1", code)
	}
	if !strings.Contains(errb.String(), "550 5.7.60") {
		t.Errorf("stderr lacks Exchange's reply:\n%s", errb.String())
	}
}

// Every subcommand has --help and -h (exit 0, usage on stdout, nothing on
// stderr), and `help CMD` prints the same.
func TestHelp(t *testing.T) {
	t.Parallel()
	for _, c := range commands() {
		for _, args := range [][]string{{c.name, "--help"}, {c.name, "-h"}, {"help", c.name}} {
			if c.name == "help" && args[0] == "help" {
				continue
			}
			var out, errb bytes.Buffer
			code := run(args, &out, &errb)
			if code != 0 || !strings.Contains(out.String(), "Usage: o365relay "+c.name) || errb.Len() > 0 {
				t.Errorf("%v: exit %d\nstdout:\n%s\nstderr:\n%s", args, code, out.String(), errb.String())
			}
		}
	}
	var out, errb bytes.Buffer
	if code := run([]string{"serve", "--help"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "O365RELAY_ALLOWED_NETWORKS") {
		t.Errorf("serve --help does not list the settings:\n%s", out.String())
	}
	// Flags show the type of their value.
	for _, want := range []string{"--listen host:port", "--retry-min duration", "--max-message-bytes size", "--max-connections int", "--log-format json|console", "--config file"} {
		if !strings.Contains(out.String(), want+"\n") {
			t.Errorf("serve --help lacks %q", want)
		}
	}
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		out.Reset()
		errb.Reset()
		if code := run(args, &out, &errb); code != 0 || !strings.Contains(out.String(), "Commands:") || errb.Len() > 0 {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, out.String(), errb.String())
		}
	}
	out.Reset()
	errb.Reset()
	if code := run([]string{"--version"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "o365relay ") {
		t.Errorf("--version: exit %d, %q", code, out.String())
	}
	// Mistakes go to stderr with exit 2.
	for _, args := range [][]string{{"nonsense"}, {}, {"serve", "--no-such-flag"}, {"help", "nonsense"}, {"config"}, {"config", "frobnicate"}} {
		out.Reset()
		errb.Reset()
		if code := run(args, &out, &errb); code != 2 || errb.Len() == 0 || out.Len() > 0 {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, out.String(), errb.String())
		}
	}
}
