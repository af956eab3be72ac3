package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
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
// as far as it got.
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

	target := cfg.Relay
	var cloud *relaytest.Cloud
	var ch *child
	var relayBin string
	if target == "" {
		cloud, err = relaytest.New(relaytest.Options{Dir: dir, Discard: true})
		if err != nil {
			return rep, err
		}
		defer func() {
			if cerr := cloud.Close(); cerr != nil && err == nil {
				err = cerr
			}
		}()
		bin := cfg.Binary
		if bin == "" {
			if bin, err = buildRelay(ctx, dir, stderr); err != nil {
				return rep, err
			}
		}
		relayBin = bin
		var fill []string
		if cfg.Restart {
			// One message a minute: what the clients send stays queued.
			fill = []string{"O365RELAY_MAILBOX_RATE=1"}
		}
		ch, err = startChild(ctx, bin, dir, cloud, cfg, fill...)
		if err != nil {
			return rep, err
		}
		rep.pid = ch.pid()
		defer func() {
			if serr := ch.stop(); serr != nil && err == nil {
				err = serr
			}
			if err != nil {
				rep.relayLogTail = ch.logTail(2000)
			}
		}()
		target = ch.smtp
	}
	rep.target = target

	ld := &loader{cfg: cfg, addr: target, body: body(cfg.Size)}
	var base int // messages Exchange had before the run
	if cloud != nil {
		// One message first: a token is held and an upstream connection
		// is open, so what follows measures the steady state.
		wctx, cancel := context.WithTimeout(ctx, warmTimeout)
		err := ld.warmUp(wctx)
		if err == nil {
			err = cloud.Exchange.WaitMessages(wctx, 1)
		}
		cancel()
		if err != nil {
			return rep, fmt.Errorf("warm-up message: %w", err)
		}
		base = len(cloud.Exchange.Messages())
		rep.tokens0 = cloud.Entra.TokenRequests()
		rep.tls0 = cloud.Exchange.Stats().TLSSessions
		if cfg.IdleFor > 0 {
			// The idle relay: nothing sent for IdleFor, CPU and RSS.
			c0, _ := cpuTime(ch.pid())
			select {
			case <-ctx.Done():
				return rep, ctx.Err()
			case <-time.After(cfg.IdleFor):
			}
			c1, _ := cpuTime(ch.pid())
			rep.idleCPU = c1 - c0
		}
		if rep.rssIdle, _, err = ch.memory(); err != nil {
			return rep, err
		}
	}

	if cfg.Idle > 0 {
		ip := openIdle(ctx, target, cfg.Idle)
		defer ip.close()
		rep.idleOpen, rep.idleErrors = ip.open(), ip.errs
		if ch != nil {
			// Let the relay's sessions settle (greeting, EHLO answered).
			time.Sleep(time.Second)
			if rep.rssWithIdle, _, err = ch.memory(); err != nil {
				return rep, err
			}
		}
	}

	if cfg.Defer {
		// Every attempt is deferred (a transient reply, so the relay keeps
		// the message and retries after retry_min): the spool only grows.
		cloud.Exchange.Inject(exchangetest.Fault{Stage: exchangetest.StageMail, Times: cfg.Messages*2 + 100,
			Reply: &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 500}, Message: "Server busy, try again later [o365relay-load -defer]"}})
	}
	runCtx, cancelRun := context.WithTimeout(ctx, cfg.Duration)
	defer cancelRun()
	var sampler *rssSampler
	var cpu0 time.Duration
	if ch != nil {
		sampler = startSampler(ch.pid())
		cpu0, _ = cpuTime(ch.pid())
	}
	if cfg.Command != "" {
		if err := runCommand(runCtx, cfg.Command, target, rep); err != nil {
			return rep, err
		}
	} else {
		ld.send(runCtx, rep)
	}
	if cfg.Restart {
		rep.rssPeak = sampler.stop()
		if cpu1, err := cpuTime(ch.pid()); err == nil {
			rep.cpu = cpu1 - cpu0
		}
	}

	if cfg.Defer {
		// Let the relay try each message once, then count what it holds.
		time.Sleep(2 * time.Second)
		if rep.queued, err = countQueued(filepath.Join(dir, "spool", "queue")); err != nil {
			return rep, err
		}
		if rep.rssQueued, _, err = ch.memory(); err != nil {
			return rep, err
		}
	} else if cfg.Restart {
		if err := restart(runCtx, &ch, relayBin, dir, cloud, cfg, base, rep); err != nil {
			return rep, err
		}
	} else if cloud != nil {
		// Wait for Exchange to have every acknowledged message, within the
		// same cap.
		acked := rep.acked()
		if cfg.Command != "" {
			acked = cfg.Messages // the command's own count; it does not say which it got a 250 for
		}
		if err := cloud.Exchange.WaitMessages(runCtx, base+acked); err != nil {
			rep.notes = append(rep.notes, fmt.Sprintf("stopped waiting for deliveries: %v", err))
		}
	}
	if cloud != nil {
		rep.matchDeliveries(cloud.Exchange.Messages()[base:])
		rep.tokens1 = cloud.Entra.TokenRequests()
		rep.tls1 = cloud.Exchange.Stats().TLSSessions
		rep.violations = len(cloud.Exchange.Violations())
	}
	if runCtx.Err() != nil && ctx.Err() == nil {
		rep.notes = append(rep.notes, fmt.Sprintf("the duration cap (%s) ended the run", cfg.Duration))
	}
	if ch != nil {
		if !cfg.Restart {
			rep.rssPeak = sampler.stop()
			if cpu1, err := cpuTime(ch.pid()); err == nil {
				rep.cpu = cpu1 - cpu0
			}
		}
		if _, rep.hwm, err = ch.memory(); err != nil {
			return rep, err
		}
	}
	if ctx.Err() != nil {
		return rep, ctx.Err()
	}
	return rep, nil
}

// loader sends the messages.
type loader struct {
	cfg  config
	addr string
	body []byte
}

// result of one message, indexed by sequence number (1..M; 0 is the warm-up).
type result struct {
	ok        bool
	err       string // reply code class, e.g. "451 4.3.0", or "network"
	start     time.Time
	acked     time.Time
	to250, tx time.Duration
}

func (l *loader) dial(ctx context.Context) (*smtp.Client, net.Conn, error) {
	d := net.Dialer{Timeout: dialTimeout}
	conn, err := d.DialContext(ctx, "tcp", l.addr)
	if err != nil {
		return nil, nil, err
	}
	if err := conn.SetDeadline(time.Now().Add(msgTimeout)); err != nil {
		_ = conn.Close() // already failing
		return nil, nil, err
	}
	c := smtp.NewClient(conn)
	if err := c.Hello("o365relay-load.localhost"); err != nil {
		_ = c.Close() // already failing
		return nil, nil, err
	}
	return c, conn, nil
}

func (l *loader) warmUp(ctx context.Context) error {
	c, conn, err := l.dial(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = c.Close() }() // after QUIT; nothing left to lose
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	var r result
	if err := l.one(c, conn, 0, &r); err != nil {
		return err
	}
	return c.Quit()
}

// one sends message seq on an open session.
func (l *loader) one(c *smtp.Client, conn net.Conn, seq int, r *result) error {
	timeout := msgTimeout + time.Duration(l.cfg.Size>>20)*2*time.Second
	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	r.start = time.Now()
	if err := c.Mail(loadFrom, nil); err != nil {
		return err
	}
	if err := c.Rcpt(rcptFor(seq), nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(header(seq)); err != nil {
		return err
	}
	if _, err := w.Write(l.body); err != nil {
		return err
	}
	endOfData := time.Now()
	if _, err := w.CloseWithResponse(); err != nil {
		return err
	}
	r.acked = time.Now()
	r.ok = true
	r.to250 = r.acked.Sub(endOfData)
	r.tx = r.acked.Sub(r.start)
	return nil
}

// send runs the clients until every message was tried or ctx ends.
func (l *loader) send(ctx context.Context, rep *report) {
	rep.results = make([]result, l.cfg.Messages+1)
	var next atomic.Int64
	take := func() (int, bool) {
		if ctx.Err() != nil {
			return 0, false
		}
		n := int(next.Add(1))
		return n, n <= l.cfg.Messages
	}
	rep.started = time.Now()
	var wg sync.WaitGroup
	for range l.cfg.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.client(ctx, take, rep.results)
		}()
	}
	wg.Wait()
	rep.finished = time.Now()
}

// client is one application connection: it reuses its session across
// messages (unless -new-connection) and reconnects after a broken one.
func (l *loader) client(ctx context.Context, take func() (int, bool), results []result) {
	var c *smtp.Client
	var conn net.Conn
	var stop func() bool
	drop := func(graceful bool) {
		if c == nil {
			return
		}
		stop()
		if graceful {
			_ = c.Quit() // the message was acknowledged; QUIT is courtesy
		}
		_ = c.Close() // closing a connection we are done with
		c, conn = nil, nil
	}
	defer drop(true)
	for {
		seq, ok := take()
		if !ok {
			return
		}
		r := &results[seq]
		if c == nil {
			var err error
			if c, conn, err = l.dial(ctx); err != nil {
				r.err = classify(err)
				c = nil
				continue
			}
			cn := conn
			stop = context.AfterFunc(ctx, func() { _ = cn.Close() })
		}
		err := l.one(c, conn, seq, r)
		switch {
		case err == nil:
			if l.cfg.NewConn {
				drop(true)
			}
		case isReply(err):
			r.err = classify(err)
			if rerr := c.Reset(); rerr != nil {
				drop(false)
			}
		default:
			r.err = classify(err)
			drop(false)
		}
	}
}

func isReply(err error) bool {
	var se *smtp.SMTPError
	return errors.As(err, &se) && se.Code != 421
}

// classify names an error by what the client saw: the reply code and
// enhanced code, or the kind of network failure.
func classify(err error) string {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		if se.EnhancedCode != (smtp.EnhancedCode{}) && se.EnhancedCode != smtp.NoEnhancedCode {
			return fmt.Sprintf("%d %d.%d.%d", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
		}
		return fmt.Sprint(se.Code)
	}
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return "network: timeout"
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
		return "network: connection closed"
	case strings.Contains(err.Error(), "connection refused"):
		return "network: connection refused"
	case strings.Contains(err.Error(), "connection reset"):
		return "network: connection reset"
	}
	return "network: other"
}

// idlePool holds idle client sessions, as applications that keep a pooled
// connection open do.
type idlePool struct {
	mu    sync.Mutex
	conns []idleConn
	errs  map[string]int
	stopc chan struct{}
	wg    sync.WaitGroup
}

type idleConn struct {
	c    *smtp.Client
	conn net.Conn
}

func openIdle(ctx context.Context, addr string, n int) *idlePool {
	p := &idlePool{errs: map[string]int{}, stopc: make(chan struct{})}
	l := &loader{addr: addr}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, conn, err := l.dial(ctx)
			p.mu.Lock()
			defer p.mu.Unlock()
			if err != nil {
				p.errs[classify(err)]++
				return
			}
			p.conns = append(p.conns, idleConn{c, conn})
		}()
	}
	wg.Wait()
	p.wg.Add(1)
	go p.keepalive()
	return p
}

func (p *idlePool) open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// keepalive sends NOOP on every idle session before the relay's command
// timeout would close it.
func (p *idlePool) keepalive() {
	defer p.wg.Done()
	t := time.NewTicker(keepalive)
	defer t.Stop()
	for {
		select {
		case <-p.stopc:
			return
		case <-t.C:
		}
		p.mu.Lock()
		conns := append([]idleConn(nil), p.conns...)
		p.mu.Unlock()
		for _, ic := range conns {
			select {
			case <-p.stopc:
				return
			default:
			}
			err := ic.conn.SetDeadline(time.Now().Add(dialTimeout))
			if err == nil {
				err = ic.c.Noop()
			}
			if err != nil {
				p.mu.Lock()
				p.errs["keepalive: "+classify(err)]++
				p.mu.Unlock()
			}
		}
	}
}

func (p *idlePool) close() {
	close(p.stopc)
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ic := range p.conns {
		_ = ic.c.Close() // closing idle sessions we own; nothing in flight
	}
	p.conns = nil
}

// measureFsync is the floor: write a 10 KB file and fsync it (what every
// durable 250 costs at least), and the same plus rename into a directory and
// fsync of that directory (what one Put costs alone, without group commit).
func measureFsync(dir string, n int) (fsyncStats, error) {
	var st fsyncStats
	probe := filepath.Join(dir, "fsync-probe")
	q := filepath.Join(probe, "q")
	if err := os.MkdirAll(q, 0o700); err != nil {
		return st, err
	}
	defer func() { _ = os.RemoveAll(probe) }() // best effort: inside the run's directory
	data := make([]byte, 10*1024)
	for i := range data {
		data[i] = byte('a' + i%26)
	}
	for i := range n {
		name := filepath.Join(probe, fmt.Sprintf("f%d", i))
		start := time.Now()
		f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return st, err
		}
		if _, err := f.Write(data); err != nil {
			_ = f.Close() // already failing
			return st, err
		}
		if err := f.Sync(); err != nil {
			_ = f.Close() // already failing
			return st, err
		}
		if err := f.Close(); err != nil {
			return st, err
		}
		st.file = append(st.file, time.Since(start))
		if err := os.Rename(name, filepath.Join(q, fmt.Sprintf("f%d", i))); err != nil {
			return st, err
		}
		d, err := os.Open(q)
		if err != nil {
			return st, err
		}
		err = d.Sync()
		if cerr := d.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return st, err
		}
		st.put = append(st.put, time.Since(start))
	}
	return st, nil
}

// runCommand runs an external client (e.g. smtp-source) against addr and
// times it. Its output is kept for the report.
func runCommand(ctx context.Context, line, addr string, rep *report) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	args := strings.Fields(strings.NewReplacer("{addr}", addr, "{host}", host, "{port}", port).Replace(line))
	if len(args) == 0 {
		return errors.New("-command is empty")
	}
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	rep.started = time.Now()
	err = cmd.Run()
	rep.finished = time.Now()
	rep.cmdOutput = out.String()
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", args[0], err, tail(rep.cmdOutput, 2000))
	}
	return nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
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
