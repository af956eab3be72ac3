package main

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/o365relay/o365relay/relay/exchangetest"
)

// delivery is one message's way through the relay as both ends saw it: the
// 250 the client read and the moment the fake Exchange accepted it, paired
// by the message's Message-ID.
type delivery struct {
	seq             int
	acked, accepted time.Time
}

func (d delivery) latency() time.Duration { return d.accepted.Sub(d.acked) }

// matchDeliveries pairs each message Exchange accepted with the 250 that
// acknowledged it, by Message-ID (by recipient for a message without one),
// and records the arrival times.
func (r *report) matchDeliveries(msgs []exchangetest.Message) {
	r.arrived = len(msgs)
	for _, m := range msgs {
		if m.Accepted.After(r.lastArrival) {
			r.lastArrival = m.Accepted
		}
		seq := seqOfMessageID(m.MessageID)
		if seq < 0 && len(m.RcptTo) == 1 {
			seq = seqOf(m.RcptTo[0])
		}
		if seq <= 0 || seq >= len(r.results) || !r.results[seq].ok {
			r.unmatched++
			continue
		}
		r.deliveries = append(r.deliveries, delivery{seq: seq, acked: r.results[seq].acked, accepted: m.Accepted})
		r.delivered = append(r.delivered, m.Accepted.Sub(r.results[seq].acked))
	}
}

// curve describes delivery latency against queue position: the messages in
// the order their 250s were read (the order they entered the queue), the
// latency of the message at positions 1, 10, 100, ... and of the last, and
// how far the order of arrival at Exchange strays from the order of the
// 250s (FIFO: a message overtaken by later ones waits longer than it must).
type curve struct {
	points []curvePoint
	// displaced is, per message, |arrival rank - ack rank|; with C
	// clients and K upstream connections some small shuffling is inherent.
	p99Displaced, maxDisplaced int
	// overtakenBy1s counts messages that arrived more than a second after
	// a message acknowledged after them.
	overtakenBy1s int
}

type curvePoint struct {
	pos     int
	latency time.Duration
}

func makeCurve(ds []delivery) curve {
	var c curve
	n := len(ds)
	if n == 0 {
		return c
	}
	byAck := append([]delivery(nil), ds...)
	sort.SliceStable(byAck, func(i, j int) bool { return byAck[i].acked.Before(byAck[j].acked) })
	for pos := 1; pos <= n; pos *= 10 {
		c.points = append(c.points, curvePoint{pos, byAck[pos-1].latency()})
		if pos > n/10 && pos != n {
			break
		}
	}
	if last := c.points[len(c.points)-1].pos; last != n {
		c.points = append(c.points, curvePoint{n, byAck[n-1].latency()})
	}
	ackRank := make(map[int]int, n)
	for i, d := range byAck {
		ackRank[d.seq] = i
	}
	byArrival := append([]delivery(nil), ds...)
	sort.SliceStable(byArrival, func(i, j int) bool { return byArrival[i].accepted.Before(byArrival[j].accepted) })
	disp := make([]int, n)
	for i, d := range byArrival {
		k := i - ackRank[d.seq]
		if k < 0 {
			k = -k
		}
		disp[i] = k
	}
	sort.Ints(disp)
	c.p99Displaced, c.maxDisplaced = disp[min(n-1, (n*99+99)/100-1)], disp[n-1]
	// Overtaken: some message acknowledged later arrived more than a
	// second earlier (the earliest later arrival is a suffix minimum).
	minLater := make([]time.Time, n+1)
	for i := n - 1; i >= 0; i-- {
		minLater[i] = byAck[i].accepted
		if i+1 < n && minLater[i+1].Before(minLater[i]) {
			minLater[i] = minLater[i+1]
		}
	}
	for i := 0; i+1 < n; i++ {
		if byAck[i].accepted.Sub(minLater[i+1]) > time.Second {
			c.overtakenBy1s++
		}
	}
	return c
}

func (c curve) String() string {
	parts := make([]string, len(c.points))
	for i, p := range c.points {
		parts[i] = fmt.Sprintf("#%d %s", p.pos, ms(p.latency))
	}
	return strings.Join(parts, ", ")
}
