package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/o365relay/o365relay/relay/exchangetest"
	"github.com/o365relay/o365relay/relay/relaytest"
)

// Per-operation deadlines: every network call has one. A
// message's deadline grows with its size so that a 35 MB message on a busy
// machine is not cut off; the duration cap bounds the run as a whole.
const (
	dialTimeout  = 10 * time.Second
	msgTimeout   = 2 * time.Minute
	readyTimeout = 60 * time.Second
	warmTimeout  = 60 * time.Second
	keepalive    = 30 * time.Second // the relay's command timeout is 1 min
	sampleEvery  = 20 * time.Millisecond
)

// run performs one measurement. The report is returned even with an error,
// as far as it got. It owns every cleanup (deferred here); the phases are
// runner methods below.
func run(ctx context.Context, cfg config, stderr io.Writer) (rep *report, err error) {
	rep = &report{cfg: cfg}
	dir, err := os.MkdirTemp(cfg.Dir, "o365relay-load-")
	if err != nil {
		return nil, err
	}
	rep.dir = dir
	defer func() {
		if cfg.KeepFiles {
			return
		}
		if rerr := os.RemoveAll(dir); rerr != nil && err == nil {
			err = rerr
		}
	}()

	// The floor first, while this run puts no load on the disk: the same
	// filesystem the spool is on.
	if cfg.Fsyncs > 0 {
		if rep.fsync, err = measureFsync(dir, cfg.Fsyncs); err != nil {
			return rep, fmt.Errorf("fsync probe: %w", err)
		}
	}

	r := &runner{cfg: cfg, rep: rep, dir: dir}
	target := cfg.Relay
	if target == "" {
		r.cloud, err = relaytest.New(relaytest.Options{Dir: dir, Discard: true})
		if err != nil {
			return rep, err
		}
		defer func() {
			if cerr := r.cloud.Close(); cerr != nil && err == nil {
				err = cerr
			}
		}()
		if err = r.startRelay(ctx, stderr); err != nil {
			return rep, err
		}
		defer func() {
			// r.ch, not a copy: -restart replaces the child.
			if serr := r.ch.stop(); serr != nil && err == nil {
				err = serr
			}
			if err != nil {
				rep.relayLogTail = r.ch.logTail(2000)
			}
		}()
		target = r.ch.smtp
	}
	rep.target = target

	r.ld = &loader{cfg: cfg, addr: target, body: body(cfg.Size)}
	if r.cloud != nil {
		if err = r.warm(ctx); err != nil {
			return rep, err
		}
	}
	if cfg.Idle > 0 {
		ip := openIdle(ctx, target, cfg.Idle)
		defer ip.close()
		if err = r.idleSessions(ip); err != nil {
			return rep, err
		}
	}
	r.deferAll()
	runCtx, cancelRun := context.WithTimeout(ctx, cfg.Duration)
	defer cancelRun()
	if err = r.load(runCtx); err != nil {
		return rep, err
	}
	if err = r.settle(runCtx); err != nil {
		return rep, err
	}
	if err = r.collect(ctx, runCtx); err != nil {
		return rep, err
	}
	return rep, ctx.Err()
}

// runner is one run's state, shared by its phases.
type runner struct {
	cfg      config
	rep      *report
	dir      string
	cloud    *relaytest.Cloud // the embedded fakes; nil with -relay
	ch       *child           // the relay child; nil with -relay
	relayBin string
	ld       *loader
	base     int // messages Exchange had before the run
	sampler  *rssSampler
	cpu0     time.Duration
}

// startRelay builds the relay (unless -binary names one) and starts it as
// a child process pointed at the embedded fakes.
func (r *runner) startRelay(ctx context.Context, stderr io.Writer) error {
	bin := r.cfg.Binary
	if bin == "" {
		var err error
		if bin, err = buildRelay(ctx, r.dir, stderr); err != nil {
			return err
		}
	}
	r.relayBin = bin
	var fill []string
	if r.cfg.Restart {
		// One message a minute: what the clients send stays queued.
		fill = []string{"O365RELAY_MAILBOX_RATE=1"}
	}
	ch, err := startChild(ctx, bin, r.dir, r.cloud, r.cfg, fill...)
	if err != nil {
		return err
	}
	r.ch = ch
	r.rep.pid = ch.pid()
	return nil
}

// warm sends one message first: a token is held and an upstream connection
// is open, so what follows measures the steady state. It then takes the
// baseline counters and the idle relay's CPU (-idle-for) and memory.
func (r *runner) warm(ctx context.Context) error {
	rep := r.rep
	wctx, cancel := context.WithTimeout(ctx, warmTimeout)
	err := r.ld.warmUp(wctx)
	if err == nil {
		err = r.cloud.Exchange.WaitMessages(wctx, 1)
	}
	cancel()
	if err != nil {
		return fmt.Errorf("warm-up message: %w", err)
	}
	r.base = len(r.cloud.Exchange.Messages())
	rep.tokens0 = r.cloud.Entra.TokenRequests()
	rep.tls0 = r.cloud.Exchange.Stats().TLSSessions
	if r.cfg.IdleFor > 0 {
		// The idle relay: nothing sent for IdleFor, CPU and RSS.
		c0, _ := cpuTime(r.ch.pid())
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(r.cfg.IdleFor):
		}
		c1, _ := cpuTime(r.ch.pid())
		rep.idleCPU = c1 - c0
	}
	rep.rssIdle, _, err = r.ch.memory()
	return err
}

// idleSessions records the idle sessions -idle opened and the relay's
// memory while it holds them.
func (r *runner) idleSessions(ip *idlePool) error {
	r.rep.idleOpen, r.rep.idleErrors = ip.open(), ip.errs
	if r.ch == nil {
		return nil
	}
	// Let the relay's sessions settle (greeting, EHLO answered).
	time.Sleep(time.Second)
	var err error
	r.rep.rssWithIdle, _, err = r.ch.memory()
	return err
}

// deferAll, with -defer, makes Exchange defer every attempt (a transient
// reply, so the relay keeps the message and retries after retry_min): the
// spool only grows.
func (r *runner) deferAll() {
	if !r.cfg.Defer {
		return
	}
	r.cloud.Exchange.Inject(exchangetest.Fault{Stage: exchangetest.StageMail, Times: r.cfg.Messages*2 + 100,
		Reply: &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 500}, Message: "Server busy, try again later [o365relay-load -defer]"}})
}

// load sends the messages (or runs -command) within runCtx while sampling
// the relay child's memory and CPU.
func (r *runner) load(runCtx context.Context) error {
	rep := r.rep
	if r.ch != nil {
		r.sampler = startSampler(r.ch.pid())
		r.cpu0, _ = cpuTime(r.ch.pid())
	}
	if r.cfg.Command != "" {
		if err := runCommand(runCtx, r.cfg.Command, rep.target, rep); err != nil {
			return err
		}
	} else {
		r.ld.send(runCtx, rep)
	}
	if r.cfg.Restart {
		rep.rssPeak = r.sampler.stop()
		if cpu1, err := cpuTime(r.ch.pid()); err == nil {
			rep.cpu = cpu1 - r.cpu0
		}
	}
	return nil
}

// settle waits for what the mode measures after sending: the deferred
// queue (-defer), the restart (-restart), or every acknowledged message at
// Exchange.
func (r *runner) settle(runCtx context.Context) error {
	rep := r.rep
	switch {
	case r.cfg.Defer:
		// Let the relay try each message once, then count what it holds.
		time.Sleep(2 * time.Second)
		var err error
		if rep.queued, err = countQueued(filepath.Join(r.dir, "spool", "queue")); err != nil {
			return err
		}
		rep.rssQueued, _, err = r.ch.memory()
		return err
	case r.cfg.Restart:
		return restart(runCtx, &r.ch, r.relayBin, r.dir, r.cloud, r.cfg, r.base, rep)
	case r.cloud != nil:
		// Wait for Exchange to have every acknowledged message, within the
		// same cap.
		acked := rep.acked()
		if r.cfg.Command != "" {
			acked = r.cfg.Messages // the command's own count; it does not say which it got a 250 for
		}
		if err := r.cloud.Exchange.WaitMessages(runCtx, r.base+acked); err != nil {
			rep.notes = append(rep.notes, fmt.Sprintf("stopped waiting for deliveries: %v", err))
		}
	}
	return nil
}

// collect reads the final counters from the fakes and the relay child.
func (r *runner) collect(ctx, runCtx context.Context) error {
	rep := r.rep
	if r.cloud != nil {
		rep.matchDeliveries(r.cloud.Exchange.Messages()[r.base:])
		rep.tokens1 = r.cloud.Entra.TokenRequests()
		rep.tls1 = r.cloud.Exchange.Stats().TLSSessions
		rep.violations = len(r.cloud.Exchange.Violations())
	}
	if runCtx.Err() != nil && ctx.Err() == nil {
		rep.notes = append(rep.notes, fmt.Sprintf("the duration cap (%s) ended the run", r.cfg.Duration))
	}
	if r.ch != nil {
		if !r.cfg.Restart {
			rep.rssPeak = r.sampler.stop()
			if cpu1, err := cpuTime(r.ch.pid()); err == nil {
				rep.cpu = cpu1 - r.cpu0
			}
		}
		var err error
		if _, rep.hwm, err = r.ch.memory(); err != nil {
			return err
		}
	}
	return nil
}

// countQueued counts the records in the child's spool queue/.
func countQueued(queue string) (int, error) {
	des, err := os.ReadDir(queue)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, de := range des {
		if strings.HasSuffix(de.Name(), ".msg") {
			n++
		}
	}
	return n, nil
}
