package main

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"time"
)

type fsyncStats struct {
	file []time.Duration // write 10 KB + fsync
	put  []time.Duration // + rename + directory fsync
}

// report is what one run measured.
type report struct {
	cfg    config
	dir    string
	target string
	pid    int // child relay; 0 with -relay

	fsync fsyncStats

	results           []result // by sequence number; [0] is the warm-up slot
	started, finished time.Time

	delivered   []time.Duration // 250 → Exchange, by message
	deliveries  []delivery
	lastArrival time.Time
	arrived     int // messages the fake Exchange accepted during the run
	unmatched   int // of those, not ours or not acknowledged

	idleOpen   int
	idleErrors map[string]int

	rssIdle, rssWithIdle, rssPeak, hwm int64
	queued                             int   // -defer: records in queue/ at the end
	rssQueued                          int64 // -defer: RSS with them queued
	cpu                                time.Duration
	idleCPU                            time.Duration // over cfg.IdleFor
	restart                            *restartStats

	tokens0, tokens1 int
	tls0, tls1       int
	violations       int

	notes        []string
	relayLogTail string
	cmdOutput    string
}

func (r *report) acked() int {
	if len(r.results) == 0 {
		return 0
	}
	n := 0
	for _, x := range r.results[1:] {
		if x.ok {
			n++
		}
	}
	return n
}

// print writes the run's report: what ran, the fsync floor, then the
// clients' figures, delivery, restart, errors and the relay's resources.
func (r *report) print(w io.Writer) {
	c := r.cfg
	p := func(format string, a ...any) { fmt.Fprintf(w, format+"\n", a...) }
	r.printHeader(p)
	if c.Command != "" {
		r.printCommand(p)
		return
	}
	if r.results == nil {
		return
	}
	var to250, tx []time.Duration
	errs := map[string]int{}
	tried := 0
	for _, x := range r.results[1:] {
		switch {
		case x.ok:
			to250 = append(to250, x.to250)
			tx = append(tx, x.tx)
			tried++
		case x.err != "":
			errs[x.err]++
			tried++
		}
	}
	elapsed := r.finished.Sub(r.started)
	rate := float64(len(to250)) / elapsed.Seconds()
	p("sent:           %d of %d acknowledged in %s: %.0f messages/s (%s/s)", len(to250), c.Messages, sec(elapsed), rate, bytesize(int64(rate*float64(c.Size))))
	if tried < c.Messages {
		p("                %d messages not tried (stopped early)", c.Messages-tried)
	}
	if len(to250) > 0 {
		p("time-to-250:    p50 %s p95 %s p99 %s max %s (end of data -> reply)", ms(pct(to250, .5)), ms(pct(to250, .95)), ms(pct(to250, .99)), ms(pct(to250, 1)))
		p("transaction:    p50 %s p95 %s p99 %s max %s (MAIL FROM -> 250)", ms(pct(tx, .5)), ms(pct(tx, .95)), ms(pct(tx, .99)), ms(pct(tx, 1)))
	}
	if r.pid != 0 && r.restart == nil {
		r.printDelivery(p, len(to250))
	}
	if r.restart != nil {
		r.restart.print(p, rate)
	}
	p("errors:         %s", counts(errs))
	if c.Idle > 0 {
		p("idle:           %d of %d connections open; errors: %s", r.idleOpen, c.Idle, counts(r.idleErrors))
	}
	r.printRelay(p, len(to250))
}

// printHeader says what ran: the clients, the relay and the fsync floor.
func (r *report) printHeader(p func(string, ...any)) {
	c := r.cfg
	pacing := "pacing off"
	if c.Paced {
		pacing = "paced to Exchange's limits"
	}
	mode := fmt.Sprintf("child process pid %d (ack=%s, %s, spool in the run's directory), fakes of Entra ID and Exchange in-process", r.pid, c.Ack, pacing)
	if c.Relay != "" {
		mode = "external " + c.Relay + " (client-side figures only)"
	}
	conn := "each client reuses its connection"
	if c.NewConn {
		conn = "one connection per message"
	}
	if c.Command != "" {
		p("o365relay-load: %d messages from: %s; %d idle connections", c.Messages, c.Command, c.Idle)
	} else {
		p("o365relay-load: %d messages x %s, %d clients (%s), %d idle connections", c.Messages, bytesize(int64(c.Size)), c.Clients, conn, c.Idle)
	}
	p("relay:          %s", mode)
	if len(r.fsync.file) > 0 {
		p("fsync floor:    write+fsync 10 KB p50 %s p99 %s; +rename+dir fsync p50 %s p99 %s (%d samples, same filesystem, before the load)",
			ms(pct(r.fsync.file, 0.50)), ms(pct(r.fsync.file, 0.99)), ms(pct(r.fsync.put, 0.50)), ms(pct(r.fsync.put, 0.99)), len(r.fsync.file))
	}
}

// printDelivery reports delivery latency per message, the curve by queue
// position and how far arrival order strays from acknowledgement order.
func (r *report) printDelivery(p func(string, ...any), acked int) {
	d := r.delivered
	switch {
	case len(d) > 0:
		span := r.lastArrival.Sub(r.started)
		p("delivery:       p50 %s p95 %s p99 %s max %s (250 -> fake Exchange has it); %d of %d delivered, last %s after the first MAIL (%.0f messages/s end to end)",
			ms(pct(d, .5)), ms(pct(d, .95)), ms(pct(d, .99)), ms(pct(d, 1)), len(d), acked, sec(span), float64(len(d))/span.Seconds())
	case r.cfg.Defer:
		p("delivery:       none: the fake Exchange deferred every attempt (-defer)")
	default:
		p("delivery:       none of %d delivered", acked)
	}
	if len(r.deliveries) > 0 {
		cv := makeCurve(r.deliveries)
		p("by position:    %s (in the order of the 250s: latency of the n-th message acknowledged)", cv)
		p("order:          arrival rank - ack rank p99 %d, max %d; %d messages overtaken by a later one by more than 1 s", cv.p99Displaced, cv.maxDisplaced, cv.overtakenBy1s)
	}
	if r.unmatched > 0 {
		p("                %d messages at Exchange not matched to an acknowledgement", r.unmatched)
	}
}

// printCommand reports a run of an external client.
func (r *report) printCommand(p func(string, ...any)) {
	c := r.cfg
	elapsed := r.finished.Sub(r.started)
	if elapsed > 0 {
		p("sent:           the command ran %s: %.0f messages/s (%d messages)", sec(elapsed), float64(c.Messages)/elapsed.Seconds(), c.Messages)
	}
	if out := strings.TrimSpace(r.cmdOutput); out != "" {
		p("command output: %s", tail(out, 500))
	}
	if r.pid != 0 {
		span := r.lastArrival.Sub(r.started)
		p("delivery:       %d messages reached the fake Exchange, the last %s after the command started", r.arrived, sec(max(span, 0)))
	}
	r.printRelay(p, c.Messages)
}

// printRelay reports the child relay's resources and the fakes' counters.
func (r *report) printRelay(p func(string, ...any), acked int) {
	c := r.cfg
	if r.pid != 0 {
		if c.IdleFor > 0 {
			p("relay idle:     %s CPU in %s (%.1f ms per minute), RSS %s", sec(r.idleCPU), c.IdleFor, float64(r.idleCPU.Microseconds())/1000/c.IdleFor.Minutes(), bytesize(r.rssIdle))
		}
		line := fmt.Sprintf("relay RSS:      idle %s (after warm-up)", bytesize(r.rssIdle))
		if c.Idle > 0 {
			line += fmt.Sprintf(", with %d idle connections %s", r.idleOpen, bytesize(r.rssWithIdle))
		}
		line += fmt.Sprintf(", peak during the run %s, VmHWM %s", bytesize(r.rssPeak), bytesize(r.hwm))
		if c.Defer {
			line += fmt.Sprintf("; with %d messages queued (Exchange deferring) %s", r.queued, bytesize(r.rssQueued))
		}
		p("%s", line)
		per100 := 0.0
		if acked > 0 {
			p("relay CPU:      %s during the run (%.2f ms per message)", sec(r.cpu), float64(r.cpu.Microseconds())/1000/float64(acked))
			per100 = float64(r.tls1-r.tls0) * 100 / float64(acked)
		}
		p("Entra ID:       %d token requests, %d of them during the run", r.tokens1, r.tokens1-r.tokens0)
		p("Exchange:       %d TLS sessions, %d of them during the run (%.2f per 100 messages); %d protocol violations", r.tls1, r.tls1-r.tls0, per100, r.violations)
	}
	for _, n := range r.notes {
		p("note:           %s", n)
	}
	if c.KeepFiles {
		p("files:          %s", r.dir)
	}
	if r.relayLogTail != "" {
		p("relay log (tail):\n%s", r.relayLogTail)
	}
}

// pct is the nearest-rank percentile (q in (0,1]).
func pct(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }

func sec(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

func bytesize(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func counts(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s: %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}
