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

// Every subcommand has --help (exit 0, usage on stderr).
func TestHelp(t *testing.T) {
	t.Parallel()
	for _, c := range commands() {
		var out, errb bytes.Buffer
		code := run([]string{c.name, "--help"}, &out, &errb)
		if code != 0 || !strings.Contains(errb.String(), "Usage: o365relay "+c.name) {
			t.Errorf("%s --help: exit %d\n%s", c.name, code, errb.String())
		}
	}
	var out, errb bytes.Buffer
	if code := run([]string{"serve", "--help"}, &out, &errb); code != 0 || !strings.Contains(errb.String(), "O365RELAY_ALLOWED_NETWORKS") {
		t.Errorf("serve --help does not list the settings:\n%s", errb.String())
	}
	if code := run([]string{"nonsense"}, &out, &errb); code != 2 {
		t.Errorf("unknown command: exit %d", code)
	}
}
