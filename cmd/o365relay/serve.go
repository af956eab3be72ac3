package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/relay"
)

// newLogger builds the daemon's logger. Messages are structured; no part of
// the relay passes a token, key or body to it, at any level.
func newLogger(cfg *config.Config, w io.Writer) (*zap.Logger, zap.AtomicLevel, error) {
	lvl, err := zap.ParseAtomicLevel(cfg.LogLevel)
	if err != nil {
		return nil, lvl, err
	}
	ec := zap.NewProductionEncoderConfig()
	ec.TimeKey = "ts"
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	if cfg.LogFormat == "console" {
		ec.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(ec)
	} else {
		enc = zapcore.NewJSONEncoder(ec)
	}
	if f, ok := w.(*os.File); ok && isJournal(f, os.Getenv("JOURNAL_STREAM")) {
		enc = newPriorityEncoder(enc) // journal.go
	}
	core := zapcore.NewCore(enc, zapcore.AddSync(w), lvl)
	return zap.New(core, zap.ErrorOutput(zapcore.AddSync(w))), lvl, nil
}

// runServe runs the daemon until SIGINT or SIGTERM, reloading on SIGHUP.
func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("serve", "serve [--config FILE] [--SETTING VALUE ...]\n\nRuns the relay. Every setting is also an environment variable and a key of the\nconfiguration file (README.md, Configuration reference).", stdout, stderr)
	// SIGHUP (systemd's ExecReload, kill -HUP) re-reads the configuration
	// with the same flags and environment and applies what can be applied
	// (relay.Reload). Caught from the start: Go's default for SIGHUP is to
	// exit, which would drop a start-up in progress.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	in, cfg, code := loadServe(fs, args, stderr)
	if cfg == nil {
		return code
	}
	log, level, err := newLogger(cfg, stderr)
	if err != nil {
		return exitErr(stderr, err)
	}
	defer func() { _ = log.Sync() }()
	logStart(log, cfg)
	ready := make(chan struct{})
	r, code := newServeRelay(cfg, log, &level, ready, stderr)
	if r == nil {
		return code
	}
	return serveRelay(ctx, r, in, log, ready, hup)
}

// loadServe parses the flags and loads the configuration, checked for what
// the daemon needs before anything is logged (`config check` says the same
// thing). The inputs are kept for SIGHUP. A nil config comes with the exit
// code.
func loadServe(fs *flag.FlagSet, args []string, stderr io.Writer) (config.Input, *config.Config, int) {
	in, _, code, ok := parseCommand(fs, args, false, stderr)
	if !ok {
		return in, nil, code
	}
	cfg, err := config.Load(in)
	if err == nil {
		err = cfg.CheckDaemon()
	}
	if err != nil {
		printConfigError(stderr, err)
		return in, nil, 2
	}
	return in, cfg, 0
}

// logStart logs the configuration's warnings and the "starting" line with
// every setting's effective value and source, keys sorted.
func logStart(log *zap.Logger, cfg *config.Config) {
	for _, w := range cfg.Warnings {
		log.Warn("configuration: " + w)
	}
	eff := cfg.Effective()
	keys := make([]string, 0, len(eff))
	for k := range eff {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fields := []zap.Field{zap.String("version", version())}
	for _, k := range keys {
		fields = append(fields, zap.String(k, eff[k]))
	}
	log.Info("starting", fields...)
}

// newServeRelay builds the relay; ready is closed (and systemd told
// READY=1) once it accepts mail. A nil relay comes with the exit code.
func newServeRelay(cfg *config.Config, log *zap.Logger, level *zap.AtomicLevel, ready chan struct{}, stderr io.Writer) (*relay.Relay, int) {
	r, err := relay.New(cfg, relay.Deps{
		Logger: log,
		Level:  level,
		OnReady: func() {
			if err := sdNotify("READY=1"); err != nil {
				log.Warn("systemd notify", zap.Error(err))
			}
			close(ready)
		},
	})
	if err != nil {
		// Said once: a setting the daemon needs is missing (relay.New runs
		// CheckDaemon) is a usage error, exit 2, printed like every other
		// configuration error; anything else (a key that does not match, a
		// taken port) is a failed start, exit 1, in the log's format.
		if ce := (*config.Error)(nil); errors.As(err, &ce) {
			printConfigError(stderr, err)
			return nil, 2
		}
		log.Error("cannot start", zap.Error(err))
		return nil, 1
	}
	return r, 0
}

// serveRelay runs r, with the systemd status line, until it stops; the
// exit code says whether it stopped cleanly.
func serveRelay(ctx context.Context, r *relay.Relay, in config.Input, log *zap.Logger, ready <-chan struct{}, hup <-chan os.Signal) int {
	done := make(chan error, 1)
	runCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { done <- r.Run(runCtx) }()
	notified := make(chan struct{})
	go func() {
		defer close(notified)
		notifyStatus(runCtx, ready, func(ctx context.Context) string {
			st := r.Status(ctx)
			return st.Line()
		})
	}()
	err := waitServe(ctx, done, hup, func() { reload(runCtx, r, in, log) }, cancel)
	cancel()
	<-notified
	if err != nil {
		log.Error("stopped with an error", zap.Error(err))
		return 1
	}
	return 0
}

// waitServe waits for the relay to stop, reloading on every SIGHUP. The
// first SIGINT/SIGTERM (ctx done) starts the drain and restores default
// handling, so a second one ends the process at once (nothing acknowledged
// is lost: it is on disk).
func waitServe(ctx context.Context, done <-chan error, hup <-chan os.Signal, onHUP, stop func()) error {
	for {
		select {
		case <-hup:
			onHUP()
		case <-ctx.Done():
			signal.Reset(os.Interrupt, syscall.SIGTERM)
			_ = sdNotify("STOPPING=1\nSTATUS=draining: finishing sessions in DATA, then stopping")
			stop()
			return <-done
		case err := <-done:
			return err
		}
	}
}

// reload handles one SIGHUP. systemd is told RELOADING=1 first and READY=1
// after (sd_notify(3)), whatever the outcome: the old configuration keeps
// serving when the new one is refused.
func reload(ctx context.Context, r *relay.Relay, in config.Input, log *zap.Logger) {
	_ = sdNotify("RELOADING=1")
	defer func() { _ = sdNotify("READY=1") }()
	log.Info("SIGHUP: reloading the configuration")
	cfg, err := config.Load(in)
	if err == nil {
		_, err = r.Reload(ctx, cfg)
	}
	if err != nil {
		log.Error("reload refused; the running configuration stays in use", zap.Error(err))
	}
}
