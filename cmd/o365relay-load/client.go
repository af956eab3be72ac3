package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

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
