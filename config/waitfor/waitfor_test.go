package waitfor

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap"
)

// recorder is a testing.TB whose Fatalf records the failure and ends the
// goroutine, as the real one does.
type recorder struct {
	testing.TB
	mu     sync.Mutex
	failed string
}

func (r *recorder) Helper() {}

func (r *recorder) Fatalf(format string, args ...any) {
	r.mu.Lock()
	r.failed = fmt.Sprintf(format, args...)
	r.mu.Unlock()
	runtime.Goexit()
}

// run calls f with a recorder on its own goroutine (Fatalf ends it) and
// returns the failure message, "" if f returned.
func run(t *testing.T, f func(tb testing.TB)) string {
	t.Helper()
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}

func TestCondReturnsOnceTrueAndFailsNamingWhat(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var n atomic.Int32
		go func() {
			for range 3 {
				time.Sleep(time.Second)
				n.Add(1)
			}
		}()
		start := time.Now()
		if msg := run(t, func(tb testing.TB) { Cond(tb, "three ticks", func() bool { return n.Load() == 3 }) }); msg != "" {
			t.Fatalf("failed: %s", msg)
		}
		if d := time.Since(start); d < 3*time.Second || d > 3*time.Second+maxInterval {
			t.Errorf("returned after %v, want 3 s plus at most one polling interval", d)
		}
		msg := run(t, func(tb testing.TB) { Cond(tb, "the impossible", func() bool { return false }) })
		if msg != "waited 1m0s for the impossible" {
			t.Errorf("failure %q", msg)
		}
	})
}

func TestCheckReportsTheLastState(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		i := 0
		msg := run(t, func(tb testing.TB) {
			CheckWithin(tb, 10*time.Second, "an empty queue", func() error { i++; return fmt.Errorf("%d queued", i) })
		})
		if !strings.HasPrefix(msg, "waited 10s for an empty queue; last: ") || !strings.HasSuffix(msg, fmt.Sprintf("%d queued", i)) {
			t.Errorf("failure %q", msg)
		}
		// Doubling from 1 ms to 100 ms: a few dozen looks in 10 s, not 10 000.
		if i < 10 || i > 120 {
			t.Errorf("%d looks in 10 s", i)
		}
	})
}

func TestRecv(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ch := make(chan int, 1)
		ch <- 7
		if got := Recv(t, ch, "seven"); got != 7 {
			t.Errorf("got %d", got)
		}
		msg := run(t, func(tb testing.TB) { RecvWithin(tb, time.Second, (<-chan int)(ch), "a second value") })
		if msg != "waited 1s for a second value" {
			t.Errorf("failure %q", msg)
		}
	})
}

// On looks again at every Notify and at nothing else: no polling.
func TestOnWakesAtNotify(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var c Changes
		var mu sync.Mutex
		looks, value := 0, 0
		done := make(chan string)
		go func() {
			done <- run(t, func(tb testing.TB) {
				On(tb, &c, "value 3", func() bool {
					mu.Lock()
					defer mu.Unlock()
					looks++
					return value == 3
				})
			})
		}()
		for v := 1; v <= 3; v++ {
			synctest.Wait() // the waiter is blocked
			mu.Lock()
			value = v
			mu.Unlock()
			c.Notify()
		}
		if msg := <-done; msg != "" {
			t.Fatal(msg)
		}
		if looks != 4 {
			t.Errorf("%d looks for 3 notifications, want 4 (one at the start)", looks)
		}
		msg := run(t, func(tb testing.TB) { On(tb, &c, "value 4", func() bool { return false }) })
		if msg != "waited 1m0s for value 4" {
			t.Errorf("failure %q", msg)
		}
	})
}

func TestLogsWaitMatchesFields(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log, logs := NewLogs(zap.InfoLevel)
		go func() {
			time.Sleep(time.Second)
			log.Info("refused", zap.String("client", "127.0.0.2"), zap.Int("code", 554))
			time.Sleep(time.Second)
			log.Info("refused", zap.String("client", "127.0.0.3"), zap.Int("code", 554), zap.Error(errors.New("network")))
		}()
		e := logs.Wait(t, "the refusal of 127.0.0.3", Fields(map[string]any{"client": "127.0.0.3", "code": 554, "error": "network"}))
		if e.Message != "refused" {
			t.Errorf("entry %+v", e)
		}
		if both := logs.WaitN(t, "both refusals", 2, Message("refused")); both[1].ContextMap()["client"] != "127.0.0.3" {
			t.Errorf("second refusal %+v", both[1])
		}
		if n := logs.Count(Fields(map[string]any{"code": 554})); n != 2 {
			t.Errorf("%d entries with code 554", n)
		}
		msg := run(t, func(tb testing.TB) {
			logs.Wait(tb, "an entry for 127.0.0.4", Fields(map[string]any{"client": "127.0.0.4"}))
		})
		if !strings.HasPrefix(msg, "waited 1m0s for an entry for 127.0.0.4 (0 of 1 entries); logged:\n") || !strings.Contains(msg, "127.0.0.3") {
			t.Errorf("failure %q", msg)
		}
	})
}
