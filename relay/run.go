package relay

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"go.uber.org/zap"
)

// Run serves until ctx is done, then shuts down in order. It returns nil
// after a clean shutdown.
func (r *Relay) Run(ctx context.Context) error {
	workCtx, stopWork := context.WithCancel(context.Background())
	defer stopWork()
	g := &group{errc: make(chan error, 4)}
	r.start(workCtx, g)
	r.announce(ctx)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-g.errc:
		r.log.Error("a part of the relay stopped; shutting down", zap.Error(runErr))
	}
	errs := r.shutdown(stopWork, g)
	if runErr != nil {
		errs = append([]error{runErr}, errs...)
	}
	if len(errs) == 0 {
		r.log.Info("stopped")
	}
	return errors.Join(errs...)
}

// group is the goroutines Run starts: it waits for them and collects the
// errors they stop with.
type group struct {
	wg   sync.WaitGroup
	errc chan error
}

// run starts f; an error it returns is reported as name's.
func (g *group) run(name string, f func() error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := f(); err != nil {
			g.errc <- fmt.Errorf("%s: %w", name, err)
		}
	}()
}

// start runs every part's goroutine: the token source, the file watcher,
// delivery and the servers (the listeners were bound in New).
func (r *Relay) start(workCtx context.Context, g *group) {
	g.run("token", func() error { return r.tokens.Run(workCtx) })
	if r.tokens.Certificate() != nil || r.listenTLS != nil {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			r.watchFiles(workCtx, r.every)
		}()
	}
	g.run("delivery", func() error { return r.sched.Run(workCtx) })
	g.run("smtp listener", r.smtp.Serve)
	r.serving.Store(true) // bound in New: connections wait in the backlog until Serve accepts
	if r.admin != nil {
		g.run("admin listener", r.admin.Serve)
	}
	if r.ctl != nil {
		g.run("control socket", r.ctl.Serve)
	}
	r.log.Info("listening", zap.Stringer("smtp", r.smtp.Addr()), zap.String("admin", r.cfg.AdminListen),
		zap.String("upstream", r.cfg.Upstream), zap.String("mailbox", r.cfg.Mailbox), zap.String("ack", r.cfg.Ack))
}

// announce says the relay has started: the listener serves and the spool
// is open, so mail handed over is safe. No wait for a token (ready.go);
// whether the spool has room is readiness, which changes over time and is
// reported by /readyz and STATUS=, while systemd's READY=1 is sent once:
// waiting for room here would fail the start of a relay whose backlog only
// its own delivery can drain.
func (r *Relay) announce(ctx context.Context) {
	if rd := r.Readiness(ctx); rd.OK {
		r.log.Info("ready: listener serving, spool writable")
	} else {
		r.log.Warn("started but not ready", zap.Any("checks", rd.Checks))
	}
	if r.onRdy != nil {
		r.onRdy()
	}
}

// shutdown stops the parts in the order of the package comment and
// returns what failed: the listener first (sessions in DATA finish up to
// shutdown_timeout), then delivery and the servers, then the pool, the
// token source and the spool.
func (r *Relay) shutdown(stopWork context.CancelFunc, g *group) []error {
	r.draining.Store(true)
	r.log.Info("shutting down", zap.Duration("timeout", r.cfg.ShutdownTimeout))
	sctx, cancel := context.WithTimeout(context.Background(), r.cfg.ShutdownTimeout)
	defer cancel()
	var errs []error
	if err := r.smtp.Shutdown(sctx); err != nil {
		errs = append(errs, err)
	}
	r.serving.Store(false)
	stopWork()
	if r.admin != nil {
		if err := r.admin.Shutdown(sctx); err != nil {
			errs = append(errs, err)
		}
	}
	if r.ctl != nil {
		if err := r.ctl.Shutdown(sctx); err != nil {
			errs = append(errs, fmt.Errorf("control socket: %w", err))
		}
	}
	g.wg.Wait()
	close(g.errc)
	for err := range g.errc { // Run's error, if any, was taken from errc already
		errs = append(errs, err)
	}
	if err := r.up.Close(); err != nil {
		errs = append(errs, fmt.Errorf("upstream: %w", err))
	}
	if err := r.tokens.Close(); err != nil {
		errs = append(errs, fmt.Errorf("token: %w", err))
	}
	if err := r.sp.Close(); err != nil {
		errs = append(errs, fmt.Errorf("spool: %w", err))
	}
	return errs
}
