package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/o365relay/o365relay/config"
)

// CLI conventions (as GNU and most Go tools do them): `--help`/`-h` print
// the usage on stdout and exit 0; a wrong flag prints the error and the
// usage on stderr and exits 2; `o365relay help CMD` is `o365relay CMD --help`;
// `o365relay --version` is `o365relay version`. Flags take one or two
// dashes and show the type of their value.

// helpFlag is -h/--help: it prints the usage to stdout when seen.
type helpFlag struct {
	print func()
	shown bool
}

func (h *helpFlag) String() string   { return "" }
func (h *helpFlag) IsBoolFlag() bool { return true }
func (h *helpFlag) Set(string) error {
	if !h.shown {
		h.print()
	}
	h.shown = true
	return nil
}

// helpShown reports whether fs's --help printed the usage during Parse.
func helpShown(fs *flag.FlagSet) bool {
	f := fs.Lookup("help")
	if f == nil {
		return false
	}
	h, ok := f.Value.(*helpFlag)
	return ok && h.shown
}

// printUsage writes "Usage: o365relay SYNOPSIS" and every flag with the type
// of its value (--listen host:port, --retry-min duration).
func printUsage(w io.Writer, fs *flag.FlagSet, synopsis string) {
	fmt.Fprintf(w, "Usage: o365relay %s\n", synopsis)
	settings := map[string]config.Setting{}
	for _, s := range config.Settings() {
		settings[s.Flag()] = s
	}
	var b strings.Builder
	fs.VisitAll(func(f *flag.Flag) {
		if _, ok := f.Value.(*helpFlag); ok {
			return
		}
		typ, usage := flag.UnquoteUsage(f)
		if s, ok := settings[f.Name]; ok {
			typ = s.ValueName()
		}
		fmt.Fprintf(&b, "  --%s", f.Name)
		if typ != "" {
			fmt.Fprintf(&b, " %s", typ)
		}
		fmt.Fprintf(&b, "\n      %s", strings.ReplaceAll(usage, "\n", "\n      "))
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
			fmt.Fprintf(&b, " (default %s)", f.DefValue)
		}
		b.WriteString("\n")
	})
	if b.Len() > 0 {
		fmt.Fprintf(w, "\nFlags:\n%s", b.String())
	}
	fmt.Fprintf(w, "  -h, --help\n      show this help\n")
}

// refuseSecretFlags refuses a secret setting given as a flag: the command
// line of a running process is readable by every local user (ps,
// /proc/PID/cmdline) and lands in shell history. The environment or a
// root-only file is the place for it.
func refuseSecretFlags(fs *flag.FlagSet, stderr io.Writer) (int, bool) {
	ok := true
	for _, s := range config.Settings() {
		if s.Secret && fs.Lookup(s.Flag()) != nil && isSet(fs, s.Flag()) {
			fmt.Fprintf(stderr, "o365relay %s: --%s refused: a secret on the command line is visible to every local user (ps, /proc) and kept in shell history; set %s in the environment (systemd: the root-only EnvironmentFile) instead\n", fs.Name(), s.Flag(), s.Env)
			ok = false
		}
	}
	if !ok {
		return 2, false
	}
	return 0, true
}

func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// runHelp is `o365relay help [COMMAND]` and `o365relay help --man`.
func runHelp(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	switch {
	case len(args) == 0:
		usage(stdout)
		return 0
	case args[0] == "--man":
		// SOURCE_DATE_EPOCH (reproducible-builds.org) dates a packaged page.
		now := time.Now()
		if sec, err := strconv.ParseInt(os.Getenv("SOURCE_DATE_EPOCH"), 10, 64); err == nil {
			now = time.Unix(sec, 0)
		}
		manPage(stdout, now)
		return 0
	case args[0] == "-h" || args[0] == "--help":
		fmt.Fprintln(stdout, "Usage: o365relay help [COMMAND | --man]\n\nPrints the commands, one command's flags, or the manual page (roff, as installed by the packages).")
		return 0
	}
	for _, c := range commands() {
		if c.name == args[0] && c.name != "help" {
			return c.run(ctx, []string{"--help"}, stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "o365relay help: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

// manPage writes o365relay(8) in roff, from the command table and the
// settings, so the packages' man page cannot drift from the binary.
func manPage(w io.Writer, now time.Time) {
	esc := func(s string) string {
		s = strings.ReplaceAll(s, `\`, `\e`)
		s = strings.ReplaceAll(s, "-", `\-`)
		if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
			s = `\&` + s
		}
		return s
	}
	fmt.Fprintf(w, ".TH O365RELAY 8 %q \"o365relay %s\" \"System Administration\"\n", now.UTC().Format("2006-01-02"), esc(version()))
	fmt.Fprintf(w, ".SH NAME\no365relay \\- SMTP relay to Exchange Online with OAuth2 (XOAUTH2)\n")
	fmt.Fprintf(w, ".SH SYNOPSIS\n.B o365relay\n.I command\n.RI [ flags ]\n.br\n.B sendmail\n.RI [ flags ] \" \" [ recipient ...]\n")
	fmt.Fprintf(w, ".SH DESCRIPTION\n%s\n", esc("o365relay accepts mail from local applications over plain SMTP (127.0.0.1:2525 by default), "+
		"keeps it in a durable spool, and forwards it to Exchange Online over STARTTLS with AUTH XOAUTH2, using an "+
		"OAuth2 token it obtains from Microsoft Entra ID with a certificate-signed client assertion. "+
		"Installed as sendmail, it submits a message from standard input to the running relay."))
	fmt.Fprintf(w, ".SH COMMANDS\n")
	for _, c := range commands() {
		fmt.Fprintf(w, ".TP\n.B %s\n%s\n", c.name, esc(c.summary))
	}
	fmt.Fprintf(w, ".SH SETTINGS\n%s\n", esc("Every setting is a key of the YAML configuration file (--config FILE), an environment variable and a flag; "+
		"flags beat the environment, which beats the file, which beats the default. Secrets are refused as flags."))
	for _, s := range config.Settings() {
		def := s.Default
		if def == "" {
			def = "empty"
		}
		fmt.Fprintf(w, ".TP\n.BR %s \", \" %s \", \" \\-\\-%s \" \" \\fI%s\\fR\n%s (default: %s)\n",
			esc(s.Key), esc(s.Env), esc(s.Flag()), esc(s.ValueName()), esc(s.Doc), esc(def))
	}
	fmt.Fprintf(w, ".SH FILES\n.TP\n.I /etc/o365relay/o365relay.env\n%s\n.TP\n.I /etc/o365relay/o365relay.pem\n%s\n.TP\n.I /var/lib/o365relay\n%s\n.TP\n.I /usr/share/o365relay/o365relay.schema.json\n%s\n",
		esc("Settings of o365relay.service (systemd EnvironmentFile); also read by sendmail when readable."),
		esc("The certificate and private key uploaded to the app registration, handed to the service with LoadCredential=."),
		esc("The spool (StateDirectory=)."),
		esc("JSON Schema of the configuration file; an example is in /usr/share/doc/o365relay/examples."))
	fmt.Fprintf(w, ".SH EXIT STATUS\n%s\n", esc("0 on success; 1 when a command failed; 2 for a usage or configuration error. "+
		"sendmail exits with sendmail's sysexits codes (64 usage, 65 data, 67 recipient, 69 unavailable, 75 temporary failure, 77 sender not permitted)."))
	fmt.Fprintf(w, ".SH SEE ALSO\n.BR systemctl (1),\n.BR journalctl (1),\n.BR sendmail (8)\n.PP\nhttps://github.com/o365relay/o365relay\n")
}
