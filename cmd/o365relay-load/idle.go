package main

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

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
