package upstream

import (
	"context"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

	"github.com/o365relay/o365relay/relay/reply"
)

// mailboxPool holds one mailbox's connections. inUse counts deliveries
// holding a slot; limit caps it (Exchange allows three connections per
// mailbox, exchange-online.md §2.5). A caller takes an idle connection before
// dialing, so idle + in use never exceeds the limit: a new connection is only
// dialed when none is idle.
//
// The limit starts at the mailbox's configured maximum and is lowered when
// Exchange answers AUTH with 432 4.3.2 while we hold other connections for
// the mailbox: someone else (another relay, an application, a connection
// Exchange has not yet released) uses a slot, so we back off to what
// Exchange evidently grants. It grows back by one per RestoreAfter without
// another 432.
type mailboxPool struct {
	cl      *Client
	name    string
	max     int
	limit   int       // guarded by cl.mu
	inUse   int       // guarded by cl.mu
	lowered time.Time // guarded by cl.mu; last 432 (or restore step)
	conns   int       // guarded by cl.mu; authenticated connections open, idle or in use
	freed   chan struct{}
	idle    []*conn // guarded by cl.mu; most recently used last
}

var errClosed = &reply.Error{Code: 451, Enhanced: smtp.EnhancedCode{4, 3, 2}, Stage: reply.StageLocal,
	Text: "upstream client is shutting down"}

func (c *Client) pool(mailbox string) (*mailboxPool, *reply.Error) {
	key := strings.ToLower(mailbox)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errClosed
	}
	p := c.pools[key]
	if p == nil {
		n := c.opts.MaxConnsPerMailbox
		if c.opts.ConnsFor != nil {
			if m := c.opts.ConnsFor(mailbox); m > 0 {
				n = m
			}
		}
		p = &mailboxPool{cl: c, name: mailbox, max: n, limit: n, freed: make(chan struct{})}
		c.pools[key] = p
	}
	return p, nil
}

// acquire waits for a slot under the current limit.
func (p *mailboxPool) acquire(ctx context.Context) error {
	for {
		p.cl.mu.Lock()
		p.restoreLocked(p.cl.opts.Clock())
		if p.inUse < p.limit {
			p.inUse++
			p.cl.mu.Unlock()
			return nil
		}
		ch := p.freed
		p.cl.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// adopt counts a newly authenticated connection as the pool's.
func (p *mailboxPool) adopt(cn *conn) {
	p.cl.mu.Lock()
	defer p.cl.mu.Unlock()
	cn.pool = p
	p.conns++
}

func (p *mailboxPool) release() {
	p.cl.mu.Lock()
	defer p.cl.mu.Unlock()
	p.inUse--
	p.wakeLocked()
}

func (p *mailboxPool) wakeLocked() {
	close(p.freed)
	p.freed = make(chan struct{})
}

// restoreLocked raises a lowered limit by one per RestoreAfter.
func (p *mailboxPool) restoreLocked(now time.Time) {
	if p.limit < p.max && now.Sub(p.lowered) >= p.cl.opts.RestoreAfter {
		p.limit++
		p.lowered = now
		p.cl.log.Info("raising connection limit again after 432 4.3.2", zap.String("mailbox", p.name), zap.Int("limit", p.limit))
		p.wakeLocked()
	}
}

// lower reacts to 432 4.3.2 at AUTH on a new connection. The caller holds a
// slot. If we hold other connections for the mailbox, the limit drops to
// their number and lower returns true: the caller should give up its slot
// and wait for one of them. Otherwise the slots are taken by someone else
// and the 432 is the caller's to report (the scheduler retries soon).
func (p *mailboxPool) lower(now time.Time) bool {
	p.cl.mu.Lock()
	defer p.cl.mu.Unlock()
	others := p.conns // the caller's own connection was refused, so not counted
	p.lowered = now
	if others <= 0 {
		p.limit = 1
		return false
	}
	if others < p.limit {
		p.limit = others
		p.cl.log.Warn("Exchange refused a connection with 432 4.3.2; lowering this mailbox's connection limit for a while",
			zap.String("mailbox", p.name), zap.Int("limit", p.limit))
	}
	return true
}

// Limit reports a mailbox's current connection limit (the configured one
// until a 432 4.3.2 lowered it).
func (c *Client) Limit(mailbox string) int {
	p, rerr := c.pool(mailbox)
	if rerr != nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return p.limit
}

// usable says whether a pooled connection may carry another message.
func (c *Client) usable(cn *conn, now time.Time) bool {
	return now.Sub(cn.lastUsed) < c.opts.IdleTimeout &&
		now.Sub(cn.created) < c.opts.MaxConnAge &&
		cn.tok.ExpiresOn.Sub(now) > tokenMargin
}

// takeIdle returns the most recently used idle connection that is still
// usable; stale ones are closed.
func (p *mailboxPool) takeIdle(now time.Time) (*conn, bool) {
	var stale []*conn
	defer func() {
		for _, cn := range stale {
			cn.close(true)
		}
	}()
	p.cl.mu.Lock()
	defer p.cl.mu.Unlock()
	for len(p.idle) > 0 {
		cn := p.idle[len(p.idle)-1]
		p.idle = p.idle[:len(p.idle)-1]
		if p.cl.usable(cn, now) {
			return cn, true
		}
		stale = append(stale, cn)
	}
	return nil, false
}

// putIdle pools a healthy connection, unless the mailbox has more
// connections open than its (lowered) limit allows. The caller still holds
// its slot.
func (p *mailboxPool) putIdle(cn *conn) {
	p.cl.mu.Lock()
	if !p.cl.closed && p.conns <= p.limit {
		p.idle = append(p.idle, cn)
		p.cl.mu.Unlock()
		return
	}
	p.cl.mu.Unlock()
	cn.close(true)
}

// runJanitor closes idle connections that expired, so that Exchange's own
// idle timeout does not close them under us and connection slots are
// released. It stops when Close closes c.stop.
func (c *Client) runJanitor() {
	defer c.janitor.Done()
	every := min(c.opts.IdleTimeout, c.opts.MaxConnAge) / 4
	every = max(every, 100*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			c.reap(c.opts.Clock())
		}
	}
}

// reap closes idle connections that are no longer usable at now.
func (c *Client) reap(now time.Time) int {
	var stale []*conn
	c.mu.Lock()
	for _, p := range c.pools {
		keep := p.idle[:0]
		for _, cn := range p.idle {
			if c.usable(cn, now) {
				keep = append(keep, cn)
			} else {
				stale = append(stale, cn)
			}
		}
		clear(p.idle[len(keep):])
		p.idle = keep
	}
	c.mu.Unlock()
	for _, cn := range stale {
		c.log.Debug("closing expired pooled connection", zap.String("mailbox", cn.mailbox))
		cn.close(true)
	}
	return len(stale)
}

// Close stops the janitor and closes every idle connection (with QUIT). It
// may be called more than once.
// Connections in use are closed when their delivery finishes. Deliver
// fails with a temporary error after Close.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	var idle []*conn
	for _, p := range c.pools {
		idle = append(idle, p.idle...)
		p.idle = nil
	}
	c.mu.Unlock()
	close(c.stop)
	c.janitor.Wait()
	for _, cn := range idle {
		cn.close(true)
	}
	return nil
}
