package main

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/o365relay/o365relay/relay/relaytest"
)

// restartStats is what -restart measured.
type restartStats struct {
	queued      int           // records in queue/ when the relay was stopped
	deliveredBy int           // messages Exchange had before the restart
	stopTook    time.Duration // SIGTERM to exit
	ready       time.Duration // exec to /readyz 200
	rssReady    int64
	rssPeak     int64
	drained     int           // messages delivered after the restart
	drainTook   time.Duration // ready to the last arrival
	cpu         time.Duration // the new process's CPU from exec to the end of the drain
}

// restart stops the relay that holds the queue, starts it again on the same
// spool with pacing off and waits for the backlog to reach Exchange.
func restart(ctx context.Context, ch **child, bin, dir string, cloud *relaytest.Cloud, cfg config, base int, rep *report) error {
	var rs restartStats
	var err error
	t := time.Now()
	if err := (*ch).stop(); err != nil {
		// Killed after the grace period: a restart after a crash, which
		// the spool must survive as well.
		rep.notes = append(rep.notes, fmt.Sprintf("stopping the relay with the queue: %v (it was killed)", err))
	}
	rs.stopTook = time.Since(t)
	if rs.queued, err = countQueued(filepath.Join(dir, "spool", "queue")); err != nil {
		return err
	}
	rs.deliveredBy = len(cloud.Exchange.Messages()) - base
	t = time.Now()
	nc, err := startChild(ctx, bin, dir, cloud, cfg)
	if err != nil {
		return fmt.Errorf("restarting the relay: %w", err)
	}
	*ch = nc
	rs.ready = time.Since(t)
	readyAt := time.Now()
	rep.pid = nc.pid()
	if rs.rssReady, _, err = nc.memory(); err != nil {
		return err
	}
	sampler := startSampler(nc.pid())
	werr := cloud.Exchange.WaitMessages(ctx, base+rep.acked())
	rs.rssPeak = sampler.stop()
	if werr != nil {
		rep.notes = append(rep.notes, fmt.Sprintf("stopped waiting for the backlog: %v", werr))
	}
	var last time.Time
	msgs := cloud.Exchange.Messages()[base:]
	for _, m := range msgs[min(rs.deliveredBy, len(msgs)):] {
		rs.drained++
		if m.Accepted.After(last) {
			last = m.Accepted
		}
	}
	rs.drainTook = last.Sub(readyAt)
	rs.cpu, _ = cpuTime(nc.pid())
	rep.restart = &rs
	return nil
}

func (rs *restartStats) print(p func(string, ...any), intake float64) {
	p("restart:        %d queued; stopped in %s; ready %s after exec (RSS %s), peak RSS while draining %s",
		rs.queued, sec(rs.stopTook), sec(rs.ready), bytesize(rs.rssReady), bytesize(rs.rssPeak))
	rate := 0.0
	if rs.drainTook > 0 {
		rate = float64(rs.drained) / rs.drainTook.Seconds()
	}
	p("drain:          %d delivered %s after ready: %.0f messages/s (intake was %.0f messages/s); CPU %s (%.2f ms per message)",
		rs.drained, sec(rs.drainTook), rate, intake, sec(rs.cpu), float64(rs.cpu.Microseconds())/1000/float64(max(rs.drained, 1)))
}
