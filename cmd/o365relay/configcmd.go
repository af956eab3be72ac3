package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/token"
)

const configSynopsis = `config check [FILE] | show [--json] | schema | example   [--config FILE] [--env-file FILE] [--SETTING VALUE ...]

  check [FILE]  validate the configuration serve would run with, without
                starting: exit 0 when it would start, 2 with the same errors
                serve prints, 1 when the certificate does not load
  show          every setting's effective value and where it came from
                (default, file, environment, flag); secrets redacted
  schema        the JSON Schema of the configuration file
  example       a commented configuration file naming every setting

FILE is read as the YAML configuration file, or, if its name ends in .env,
as a systemd EnvironmentFile (VAR=value lines, like
/etc/o365relay/o365relay.env) on top of the environment. The unit's own
Environment= lines are not read: under systemd, AZURE_CLIENT_CERTIFICATE_PATH
and O365RELAY_SPOOL_DIR come from the unit, so give them here when checking
an env file by hand.`

// runConfig is `o365relay config SUBCOMMAND`.
func runConfig(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("config", configSynopsis, stdout, stderr)
	asJSON := fs.Bool("json", false, "show: print JSON")
	in, rest, code, ok := parseCommand(fs, args, true, stderr)
	if !ok {
		return code
	}
	if len(rest) == 0 {
		fs.Usage()
		return 2
	}
	sub, rest := rest[0], rest[1:]
	switch sub {
	case "schema", "example":
		if len(rest) > 0 {
			fmt.Fprintf(stderr, "o365relay config %s: unexpected argument %q\n", sub, rest[0])
			return 2
		}
		if sub == "schema" {
			_, _ = stdout.Write(config.Schema())
		} else {
			_, _ = io.WriteString(stdout, config.Example())
		}
		return 0
	case "check", "show":
	default:
		fmt.Fprintf(stderr, "o365relay config: unknown subcommand %q (check, show, schema, example)\n", sub)
		return 2
	}
	// A further flag after the subcommand (config show --json).
	if err := fs.Parse(rest); err != nil {
		return 2
	}
	if helpShown(fs) {
		return 0
	}
	if code, ok := refuseSecretFlags(fs, stderr); !ok {
		return code
	}
	in, err := flagInputs(fs, in)
	if err != nil {
		fmt.Fprintln(stderr, "o365relay:", err)
		return 2
	}
	rest = fs.Args()
	if len(rest) > 1 || (len(rest) == 1 && sub == "show") {
		fmt.Fprintf(stderr, "o365relay config %s: unexpected argument %q\n", sub, rest[len(rest)-1])
		return 2
	}
	if len(rest) == 1 {
		var err error
		if strings.HasSuffix(rest[0], ".env") {
			err = addEnvFile(&in, rest[0])
		} else {
			in.File = rest[0]
		}
		if err != nil {
			fmt.Fprintln(stderr, "o365relay:", err)
			return 2
		}
	}
	cfg, err := config.Load(in)
	if err != nil {
		printConfigError(stderr, err)
		return 2
	}
	if sub == "show" {
		return showConfig(stdout, stderr, cfg, in.File, *asJSON)
	}
	return checkConfig(stdout, stderr, cfg)
}

// checkConfig makes the checks serve makes before it touches the network or
// the spool: the settings the daemon needs, then the credential file.
func checkConfig(stdout, stderr io.Writer, cfg *config.Config) int {
	for _, w := range cfg.Warnings {
		fmt.Fprintln(stderr, "o365relay: warning:", w)
	}
	if err := cfg.CheckDaemon(); err != nil {
		printConfigError(stderr, err)
		return 2
	}
	if _, err := token.CredentialFromConfig(cfg, nil); err != nil {
		fmt.Fprintln(stderr, "o365relay:", err)
		return 1
	}
	// What serve would log at start about the key file (config check has
	// no logger, so CredentialFromConfig above says nothing).
	if cfg.Credential() == "certificate" {
		if w := token.KeyFileWarning(cfg.CertificatePath); w != "" {
			fmt.Fprintf(stderr, "o365relay: warning: %s; %s\n", w, token.KeyFileFix)
		}
	}
	fmt.Fprintf(stdout, "configuration OK: %s credential, mailbox %s, listen %s, spool %s\n",
		cfg.Credential(), cmp.Or(cfg.Mailbox, "(per sender rule)"), cfg.Listen, cfg.SpoolDir)
	fmt.Fprintln(stdout, "Next: o365relay doctor (checks Entra ID and Exchange Online with this configuration).")
	return 0
}

func showConfig(stdout, stderr io.Writer, cfg *config.Config, file string, asJSON bool) int {
	rows := cfg.Show(file)
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rows); err != nil {
			return exitErr(stderr, err)
		}
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SETTING\tVALUE\tSOURCE")
	for _, r := range rows {
		src := string(r.Source)
		if r.Where != "" {
			src += " (" + r.Where + ")"
		}
		v := r.Value
		if v == "" {
			v = `""`
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Key, v, src)
	}
	if err := tw.Flush(); err != nil {
		return exitErr(stderr, err)
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintln(stderr, "o365relay: warning:", w)
	}
	return 0
}

// readEnvFile reads a systemd EnvironmentFile: VAR=value lines; blank lines
// and lines starting with # or ; are ignored; a value in matching single
// or double quotes loses them. (systemd also joins lines ending in a
// backslash and expands escapes in double quotes; the shipped file needs
// neither, and such a line is refused rather than read differently.)
func readEnvFile(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("env file: %w", err)
	}
	defer func() { _ = f.Close() }() // read-only
	var out []string
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" || strings.ContainsAny(k, " \t\"'") {
			return nil, fmt.Errorf("%s:%d: not a VAR=value line", path, n)
		}
		if strings.HasSuffix(v, `\`) {
			return nil, fmt.Errorf("%s:%d %s: a line continued with a backslash is not supported here; put the value on one line", path, n, k)
		}
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		out = append(out, k+"="+v)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("env file %s: %w", path, err)
	}
	return out, nil
}

// flagInputs re-reads --config, --env-file and the setting flags from fs
// after a second Parse (flags may follow the subcommand: config show
// --listen X).
func flagInputs(fs *flag.FlagSet, in config.Input) (config.Input, error) {
	keyOf := map[string]string{}
	for _, s := range config.Settings() {
		keyOf[s.Flag()] = s.Key
	}
	in.Env = os.Environ()
	var err error
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "config":
			in.File = f.Value.String()
		case "env-file":
			err = addEnvFile(&in, f.Value.String())
		}
		if k, ok := keyOf[f.Name]; ok {
			in.Flags[k] = f.Value.String()
		}
	})
	return in, err
}

// addEnvFile appends a systemd EnvironmentFile's variables to in.Env
// (later entries win, as the file wins over the unit's Environment=) and
// sets them in the process environment too, as systemd would: the file may
// also hold SSL_CERT_FILE or HTTPS_PROXY, which Go's TLS and HTTP code read
// from the environment on first use, after this.
func addEnvFile(in *config.Input, path string) error {
	if path == "" {
		return nil
	}
	env, err := readEnvFile(path)
	if err != nil {
		return err
	}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		if err := os.Setenv(k, v); err != nil {
			return fmt.Errorf("env file %s: %s: %w", path, k, err)
		}
	}
	in.Env = append(in.Env, env...)
	return nil
}
