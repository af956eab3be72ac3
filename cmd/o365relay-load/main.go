// Command o365relay-load measures the relay under load: N concurrent SMTP
// clients send M messages of S bytes, optionally beside K idle client
// connections, and the command prints throughput, the time to the 250 (the
// durable acknowledgement), the end-to-end delivery latency up to the moment
// the fake Exchange Online holds the message, errors by reply code, the
// relay's resident memory, Entra ID token requests and upstream TLS
// handshakes — beside the machine's own fsync latency measured in the same
// run, which is the floor for a durable 250.
//
// By default it runs everything on loopback: the strict fakes of Entra ID and
// Exchange Online (relay/relaytest, Exchange keeping only sizes and hashes),
// and the relay as a child process (built with `go build` into a temporary
// directory, or --binary) with a temporary spool directory, so its memory is
// read from /proc/<pid>/status (VmRSS sampled during the run, VmHWM at the
// end). With --relay ADDR it drives an already running relay (or any SMTP
// server, e.g. Postfix's smtp-sink as a baseline) instead and reports only
// what the client side sees. Only loopback addresses are accepted.
//
// Usage (from the repository, so that `go build` finds the module):
//
//	go run ./cmd/o365relay-load -clients 8 -messages 10000 -size 10KiB
//	go run ./cmd/o365relay-load -clients 4 -messages 100 -size 5MiB
//	go run ./cmd/o365relay-load -clients 1 -messages 1 -size 35000000
//	go run ./cmd/o365relay-load -idle 1000 -clients 1 -messages 100
//	go run ./cmd/o365relay-load -relay 127.0.0.1:2525 -clients 8 -messages 1000
//	go run ./cmd/o365relay-load -messages 10000 -command \
//	    'smtp-source -d -s 8 -m 10000 -l 10240 -f relay@contoso.example -t x@fabrikam.example {addr}'
//
// Every run is bounded: at most -duration of wall time (default 10 min; the
// senders stop and the report says how far they got), at most 1,000,000
// messages, 1,000 clients, 20,000 idle connections and 64 MiB per message.
//
// Definitions. time-to-250: from handing the client library the end of the
// message (the last bytes and the final dot) to reading the reply — what the
// relay's durable write costs the application. transaction: MAIL FROM to the
// 250. delivery: from the 250 to the fake Exchange having accepted the
// message (matched by a per-message recipient, which the fake records even
// when it discards bodies). A run starts with one warm-up message, so a
// token is held and an upstream connection is open: token requests and TLS
// handshakes "during the run" are what the message path itself caused.
//
// The child relay's pacing, which holds a mailbox to Exchange Online's 30
// messages a minute and 10,000 recipients a day, is off unless -paced: the
// fake has no such limit and the run measures what the relay itself can do.
// -defer makes the fake answer 451 to every MAIL FROM, so the queue only
// grows (memory with a long queue). -command runs another client, such as
// Postfix's smtp-source, against the same child relay.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := runMain(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func runMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, code, done := parseArgs(args, stderr)
	if done {
		return code
	}
	rep, err := run(ctx, cfg, stderr)
	if rep != nil {
		rep.print(stdout)
	}
	if err != nil {
		fmt.Fprintln(stderr, "o365relay-load:", err)
		return 1
	}
	return 0
}

// Bounds on a run (a load run is bounded in count and time, so it can never
// turn into a flood).
const (
	maxMessages = 1_000_000
	maxClients  = 1_000
	maxIdle     = 20_000
	maxSize     = 64 << 20
	maxDuration = time.Hour
)

// config is one run's parameters.
type config struct {
	Clients   int
	Messages  int
	Size      int
	Idle      int
	Duration  time.Duration
	Relay     string // external relay; "" = child process
	Binary    string // prebuilt o365relay; "" = go build
	Dir       string // parent of the temporary directory (spool, fakes' files)
	Fsyncs    int    // fsync floor samples
	NewConn   bool   // one connection per message
	Ack       string // child relay's ack mode
	LogLevel  string // child relay's log level
	KeepFiles bool
	Command   string        // external client instead of the built-in ones
	Paced     bool          // keep the relay's per-mailbox pacing (Exchange's limits)
	Defer     bool          // the fake Exchange defers every message: the queue grows
	Restart   bool          // fill the queue behind pacing, restart the relay, drain it
	IdleFor   time.Duration // measure the idle relay this long after warm-up
}

func parseArgs(args []string, stderr io.Writer) (config, int, bool) {
	fs := flag.NewFlagSet("o365relay-load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: o365relay-load [flags]\n\nDrives concurrent SMTP clients at an o365relay (by default a child process\nbetween in-process fakes of Entra ID and Exchange Online) and reports\nthroughput, time-to-250, delivery latency, errors, RSS, token requests and\nupstream TLS handshakes beside this disk's fsync latency.\n\n")
		fs.PrintDefaults()
	}
	var c config
	var size, dur, idleFor string
	fs.IntVar(&c.Clients, "clients", 8, "concurrent SMTP clients sending")
	fs.IntVar(&c.Messages, "messages", 1000, "messages to send in total")
	fs.StringVar(&size, "size", "10KiB", "size of each message in bytes (suffixes KB, KiB, MB, MiB)")
	fs.IntVar(&c.Idle, "idle", 0, "idle client connections held open (EHLO, then NOOP every 30 s) during the run")
	fs.StringVar(&dur, "duration", "10m", "wall-time cap of the run; senders stop when it is reached")
	fs.StringVar(&c.Relay, "relay", "", "drive the relay (or SMTP server) at this loopback `host:port` instead of starting one")
	fs.StringVar(&c.Binary, "binary", "", "o365relay `binary` to run (default: go build ./cmd/o365relay into a temporary directory)")
	fs.StringVar(&c.Dir, "dir", "", "parent `directory` of the run's temporary directory (spool, fsync probe); choose the filesystem to measure (default $TMPDIR)")
	fs.IntVar(&c.Fsyncs, "fsync-samples", 300, "write+fsync samples of a 10 KB file for the fsync floor (0: skip)")
	fs.BoolVar(&c.NewConn, "new-connection", false, "open a new SMTP connection for every message (default: each client reuses its connection)")
	fs.StringVar(&c.Ack, "ack", "spool", "ack mode of the child relay (spool or upstream)")
	fs.StringVar(&c.LogLevel, "relay-log-level", "info", "log level of the child relay (its log goes to a file in the run's directory)")
	fs.StringVar(&c.Command, "command", "", "run this client `command line` instead of the built-in clients ({addr}, {host} and {port} are replaced by the relay's address; -messages must say how many messages it sends), e.g. Postfix's smtp-source")
	fs.BoolVar(&c.Paced, "paced", false, "keep the child relay's per-mailbox pacing (mailbox_rate 30/min, mailbox_daily_recipients 10000: Exchange Online's limits); by default both are 0 so the run measures the relay, not the limits")
	fs.BoolVar(&c.Defer, "defer", false, "make the fake Exchange answer 451 to every MAIL FROM during the run, so every message stays queued (memory with a long queue)")
	fs.BoolVar(&c.Restart, "restart", false, "fill the queue: the child relay paces its mailbox to 1 message a minute while the clients send, so nearly every message stays queued; then stop it (SIGTERM), start it again on the same spool with pacing off and report the time to ready, RSS and the rate at which the backlog drains beside the intake rate")
	fs.StringVar(&idleFor, "idle-for", "0s", "after the warm-up message, leave the relay idle this long and report its CPU per minute and RSS (e.g. 60s)")
	fs.BoolVar(&c.KeepFiles, "keep", false, "keep the run's temporary directory (relay log, spool) and print its path")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return c, 0, true
		}
		return c, 2, true
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "o365relay-load: unexpected argument %q\n", fs.Arg(0))
		return c, 2, true
	}
	var err error
	if c.Size, err = parseSize(size); err != nil {
		fmt.Fprintf(stderr, "o365relay-load: -size: %v\n", err)
		return c, 2, true
	}
	if c.IdleFor, err = time.ParseDuration(idleFor); err != nil || c.IdleFor < 0 || c.IdleFor > 10*time.Minute {
		fmt.Fprintf(stderr, "o365relay-load: -idle-for: must be a duration of 0 to 10m\n")
		return c, 2, true
	}
	if c.Duration, err = time.ParseDuration(dur); err != nil {
		fmt.Fprintf(stderr, "o365relay-load: -duration: %v\n", err)
		return c, 2, true
	}
	if err := c.check(); err != nil {
		fmt.Fprintf(stderr, "o365relay-load: %v\n", err)
		return c, 2, true
	}
	return c, 0, false
}

func (c *config) check() error {
	switch {
	case c.Clients < 1 || c.Clients > maxClients:
		return fmt.Errorf("-clients must be 1..%d", maxClients)
	case c.Messages < 0 || c.Messages > maxMessages:
		return fmt.Errorf("-messages must be 0..%d", maxMessages)
	case c.Size < minSize || c.Size > maxSize:
		return fmt.Errorf("-size must be %d..%d bytes", minSize, maxSize)
	case c.Idle < 0 || c.Idle > maxIdle:
		return fmt.Errorf("-idle must be 0..%d", maxIdle)
	case c.Duration <= 0 || c.Duration > maxDuration:
		return fmt.Errorf("-duration must be more than 0 and at most %s", maxDuration)
	case c.Fsyncs < 0 || c.Fsyncs > 100_000:
		return errors.New("-fsync-samples must be 0..100000")
	case c.Defer && c.Relay != "":
		return errors.New("-defer needs the child relay (not -relay)")
	case c.Restart && (c.Relay != "" || c.Defer || c.Paced):
		return errors.New("-restart needs the child relay and excludes -defer and -paced")
	case c.Command != "" && c.Messages < 1:
		return errors.New("-command needs -messages: how many messages the command sends")
	case c.Ack != "spool" && c.Ack != "upstream":
		return errors.New("-ack must be spool or upstream")
	}
	if c.Relay != "" {
		if err := checkLoopback(c.Relay); err != nil {
			return fmt.Errorf("-relay: %w", err)
		}
		if c.Binary != "" {
			return errors.New("-relay and -binary exclude each other")
		}
	}
	return nil
}

// parseSize reads "10240", "10KB", "10KiB", "5MB", "5MiB".
func parseSize(s string) (int, error) {
	units := []struct {
		suffix string
		mult   int
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"KB", 1000}, {"MB", 1000_000}, {"K", 1 << 10}, {"M", 1 << 20}, {"B", 1}}
	mult := 1
	for _, u := range units {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = v, u.mult
			break
		}
	}
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a size", s)
	}
	if n > maxSize/mult+1 {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return n * mult, nil
}
