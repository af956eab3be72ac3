package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/o365relay/o365relay/config"
)

// The command line every subcommand shares: a flag per setting, --config
// and --env-file, help and usage errors, and how configuration errors are
// printed.

// loadCommand registers --config and one flag per setting on fs, parses
// args and loads the configuration (flags beat environment beat file). With
// positional false no arguments may follow the flags. A nil config means the
// command is done: help was shown (code 0) or the flags or a setting were
// wrong (code 2, every bad setting printed).
func loadCommand(fs *flag.FlagSet, args []string, positional bool, stderr io.Writer) (cfg *config.Config, rest []string, code int) {
	in, rest, code, ok := parseCommand(fs, args, positional, stderr)
	if !ok {
		return nil, nil, code
	}
	cfg, err := config.Load(in)
	if err != nil {
		printConfigError(stderr, err)
		return nil, nil, 2
	}
	return cfg, rest, 0
}

// parseCommand is loadCommand's flag half: it returns the configuration's
// inputs, which serve keeps to load them again on SIGHUP. ok false means
// the command is done with code.
func parseCommand(fs *flag.FlagSet, args []string, positional bool, stderr io.Writer) (in config.Input, rest []string, code int, ok bool) {
	file := fs.String("config", "", "YAML configuration `file` (flags beat environment beat file)")
	envFile := fs.String("env-file", "", "read VAR=value lines from this systemd EnvironmentFile `file` (e.g. /etc/o365relay/o365relay.env) on top of the environment, at start")
	vals := map[string]*string{}
	keyOf := map[string]string{}
	for _, s := range config.Settings() {
		usage := s.Doc + " (env " + s.Env + ")"
		if s.Secret {
			usage = s.Doc + " Refused on the command line: set " + s.Env + "."
		}
		if s.Default != "" && !s.Secret {
			usage += " (default " + s.Default + ")"
		}
		vals[s.Key] = fs.String(s.Flag(), "", usage)
		keyOf[s.Flag()] = s.Key
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return in, nil, 0, false
		}
		return in, nil, 2, false
	}
	if helpShown(fs) {
		return in, nil, 0, false
	}
	if code, ok := refuseSecretFlags(fs, stderr); !ok {
		return in, nil, code, false
	}
	if !positional && fs.NArg() > 0 {
		fmt.Fprintf(stderr, "o365relay %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return in, nil, 2, false
	}
	in = config.Input{File: *file, Env: os.Environ(), Flags: map[string]string{}}
	if err := addEnvFile(&in, *envFile); err != nil {
		fmt.Fprintln(stderr, "o365relay:", err)
		return in, nil, 2, false
	}
	fs.Visit(func(f *flag.Flag) {
		if k, ok := keyOf[f.Name]; ok {
			in.Flags[k] = *vals[k]
		}
	})
	return in, fs.Args(), 0, true
}

func printConfigError(stderr io.Writer, err error) {
	fmt.Fprintf(stderr, "o365relay: configuration:\n%s\n", indent(err.Error()))
}

// newFlagSet makes a FlagSet whose errors go to stderr with the usage, and
// whose -h/--help prints the usage to stdout (help.go).
func newFlagSet(name, synopsis string, stdout, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { printUsage(stderr, fs, synopsis) }
	h := &helpFlag{print: func() { printUsage(stdout, fs, synopsis) }}
	fs.Var(h, "help", "show this help")
	fs.Var(h, "h", "show this help")
	return fs
}

// parseFlags parses args; it returns (exit code, done) for --help and errors.
func parseFlags(fs *flag.FlagSet, args []string) (int, bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, true
		}
		return 2, true
	}
	if helpShown(fs) {
		return 0, true
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "o365relay %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return 2, true
	}
	return 0, false
}

// indent indents every line of s by two spaces, for multi-line errors.
func indent(s string) string {
	return "  " + strings.ReplaceAll(s, "\n", "\n  ")
}
