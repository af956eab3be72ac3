package upstream

import (
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/o365relay/o365relay/relay/reply"
)

// mailboxPool holds one mailbox's idle authenticated connections for
// reuse. It limits nothing: how many deliveries run at once for a mailbox
// is the caller's to decide (the delivery scheduler owns that limit and
// lowers it after a 432 4.3.2), so idle connections never outnumber the
// deliveries that ran at once.
type mailboxPool struct {
	cl   *Client
	name string
	idle []*conn // guarded by cl.mu; most recently used last
}

var errClosed = &reply.Error{Code: 451, Enhanced: reply.EnhancedCode{4, 3, 2}, Stage: reply.StageLocal,
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
		p = &mailboxPool{cl: c, name: mailbox}
		c.pools[key] = p
	}
	return p, nil
}

// adopt marks a newly authenticated connection as the pool's.
func (p *mailboxPool) adopt(cn *conn) {
	p.cl.mu.Lock()
	defer p.cl.mu.Unlock()
	cn.pool = p
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

// putIdle pools a healthy connection (closed instead if the client is).
func (p *mailboxPool) putIdle(cn *conn) {
	p.cl.mu.Lock()
	if !p.cl.closed {
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
