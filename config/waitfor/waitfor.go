// Package waitfor is how tests wait for something another goroutine or
// process does: a value on a channel, an entry in the logs, a state that
// can only be polled. Every wait is bounded, and a wait that times out
// fails the test naming what it waited for, so a test never sleeps and
// then asserts (docs/design.md#tests-use-real-parts).
//
// Prefer a signal to polling: Recv for a channel, Logs (zap's observer)
// for an entry the code logs, Changes for output that a writer appends to.
// Poll (Cond, Check) only what has no signal, such as the state of a
// child process seen through its HTTP endpoints.
//
// The timeout only bounds a failure: a test that passes never waits for
// it, so it is generous, for a loaded machine running -race. Inside a
// testing/synctest bubble the waits run on the bubble's clock.
//
// It sits under config, the lowest layer, so that the tests of every
// layer can import it without pointing upward (docs/architecture.md). It
// imports the standard library and zap only.
package waitfor

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// Timeout bounds every wait of this package unless the caller gives its own.
const Timeout = time.Minute

// maxInterval caps the polling interval, which starts at a millisecond
// and doubles.
const maxInterval = 100 * time.Millisecond

// Cond polls cond until it holds; after Timeout it fails t with what it
// waited for.
func Cond(t testing.TB, what string, cond func() bool) {
	t.Helper()
	CondWithin(t, Timeout, what, cond)
}

// CondWithin is Cond with its own timeout.
func CondWithin(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	CheckWithin(t, timeout, what, func() error {
		if cond() {
			return nil
		}
		return errNotYet
	})
}

var errNotYet = fmt.Errorf("condition false")

// Check polls check until it returns nil; after Timeout it fails t with
// what it waited for and the last error, which should describe the state
// seen (e.g. "3 messages still queued").
func Check(t testing.TB, what string, check func() error) {
	t.Helper()
	CheckWithin(t, Timeout, what, check)
}

// CheckWithin is Check with its own timeout.
func CheckWithin(t testing.TB, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	interval := time.Millisecond
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			if err == errNotYet {
				t.Fatalf("waited %v for %s", timeout, what)
			}
			t.Fatalf("waited %v for %s; last: %v", timeout, what, err)
		}
		time.Sleep(interval)
		interval = min(2*interval, maxInterval)
	}
}

// Recv returns the next value from ch (the zero value if ch is closed);
// after Timeout it fails t with what it waited for.
func Recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	return RecvWithin(t, Timeout, ch, what)
}

// RecvWithin is Recv with its own timeout.
func RecvWithin[T any](t testing.TB, timeout time.Duration, ch <-chan T, what string) T {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("waited %v for %s", timeout, what)
		panic("unreachable")
	}
}

// Changes tells waiters that something they watch may have changed: the
// writer calls Notify after each change (a line of output, a log entry),
// and On re-evaluates its condition then instead of polling. The zero
// value is ready to use; it must not be copied after first use.
type Changes struct {
	mu sync.Mutex
	ch chan struct{} // closed by the next Notify
}

// Notify wakes every waiter.
func (c *Changes) Notify() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ch != nil {
		close(c.ch)
		c.ch = nil
	}
}

// next returns a channel closed by the next Notify.
func (c *Changes) next() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ch == nil {
		c.ch = make(chan struct{})
	}
	return c.ch
}

// On waits until cond holds, evaluating it now and after each Notify of c;
// after Timeout it fails t with what it waited for.
func On(t testing.TB, c *Changes, what string, cond func() bool) {
	t.Helper()
	OnWithin(t, Timeout, c, what, cond)
}

// OnWithin is On with its own timeout.
func OnWithin(t testing.TB, timeout time.Duration, c *Changes, what string, cond func() bool) {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		// Take the channel before looking, so that a change between the
		// look and the wait is not missed.
		changed := c.next()
		if cond() {
			return
		}
		select {
		case <-changed:
		case <-timer.C:
			t.Fatalf("waited %v for %s", timeout, what)
		}
	}
}
