// Command o365relay is an SMTP relay that lets applications which speak only
// plain, unauthenticated SMTP send through Exchange Online, authenticating
// with an OAuth2 token obtained from Entra ID (certificate-signed client
// assertion, client-credentials flow, SMTP.SendAsApp).
//
// main only parses the subcommand, loads configuration and hands over to the
// relay packages; see README.md for the subcommands and settings.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/o365relay/o365relay/relay/status"
)

type command struct {
	name, summary string
	run           func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

func commands() []command {
	return []command{
		{"serve", "run the relay daemon", runServe},
		{"demo", "run the relay against built-in imitations of Entra ID and Exchange Online and send one message", runDemo},
		{"status", "what the running relay is doing: readiness, token, certificate, held mailboxes, queue", runStatus},
		{"queue", "administer the queue through the running relay: list | show ID | retry ID|all | delete ID | failed", runQueue},
		{"healthcheck", "exit 0 if the running relay's /readyz says ready (mail handed over is safe), 1 otherwise", runHealthcheck},
		{"doctor", "check the Azure and Exchange setup step by step and print the fix for what is wrong", runDoctor},
		{"send", "send one test message straight to Exchange Online, reporting each step", runSend},
		{"token", "obtain an access token and print its claims (never the token unless --print-token)", runToken},
		{"version", "print the version", runVersion},
		{"config", "check a configuration, show the effective one and where each value came from, print the schema or an example", runConfig},
		{"sendmail", "submit a message from stdin to the running relay, as sendmail does (-t, -i, -f, -F); also as /usr/sbin/sendmail", runSendmail},
		{"cert", "cert new: make the key and self-signed certificate to upload to the app registration", runCert},
		{"setup", "setup azure: print the PowerShell script that does the Azure side (app, certificate, permission, mailboxes)", runSetup},
		{"help", "show the commands, or one command's flags: help COMMAND", runHelp},
	}
}

func main() {
	args := os.Args[1:]
	// Installed as /usr/sbin/sendmail (a symlink or the packages'
	// alternative), the binary is the sendmail command.
	if filepath.Base(os.Args[0]) == "sendmail" {
		args = append([]string{"sendmail"}, args...)
	}
	os.Exit(run(args, os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "-h", "--help":
		usage(stdout)
		return 0
	case "--version", "-version":
		return runVersion(context.Background(), nil, stdout, stderr)
	}
	for _, c := range commands() {
		if c.name == args[0] {
			// The first SIGINT/SIGTERM cancels ctx (a graceful stop); the
			// daemon restores default handling afterwards so a second signal
			// ends the process at once.
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "o365relay: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "Usage: o365relay <command> [flags]\n\nCommands:\n")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-12s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nRun 'o365relay help <command>' for a command's flags; --version prints the version.\n")
}

// version reports the module version and VCS revision Go stamped into the
// binary (no ldflags needed: `go build` records them in build info).
func version() string { return status.ReadBuild().String() }

func runVersion(_ context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
		fmt.Fprintln(stdout, "Usage: o365relay version\n\nPrints the version, VCS revision and Go version (also: o365relay --version).")
		return 0
	}
	fmt.Fprintln(stdout, "o365relay", version())
	return 0
}

// exitErr prints err and returns the exit code for it.
func exitErr(stderr io.Writer, err error) int {
	if err == nil {
		return 0
	}
	if errors.Is(err, errUsage) {
		return 2
	}
	fmt.Fprintln(stderr, "o365relay:", err)
	return 1
}

var errUsage = errors.New("usage")
