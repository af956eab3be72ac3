package waitfor

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// Logs is zap's observer whose entries can be waited for: a test hands the
// code under test Logger and waits for the entry that says the code did
// (or decided not to do) something, matched by its structured fields.
type Logs struct {
	*observer.ObservedLogs
	changes Changes
}

// NewLogs returns a logger recording entries at level and above, and the
// record.
func NewLogs(level zapcore.LevelEnabler) (*zap.Logger, *Logs) {
	core, obs := observer.New(level)
	l := &Logs{ObservedLogs: obs}
	hooked := zapcore.RegisterHooks(core, func(zapcore.Entry) error {
		// Hooks run after the observer has recorded the entry.
		l.changes.Notify()
		return nil
	})
	return zap.New(hooked), l
}

// Wait returns the first entry that match accepts, waiting up to Timeout
// for it to be logged; after that it fails t with what it waited for and
// the entries seen.
func (l *Logs) Wait(t testing.TB, what string, match func(observer.LoggedEntry) bool) observer.LoggedEntry {
	t.Helper()
	return l.WaitN(t, what, 1, match)[0]
}

// WaitN returns the first n entries that match accepts, waiting up to
// Timeout for them to be logged.
func (l *Logs) WaitN(t testing.TB, what string, n int, match func(observer.LoggedEntry) bool) []observer.LoggedEntry {
	t.Helper()
	timer := time.NewTimer(Timeout)
	defer timer.Stop()
	for {
		changed := l.changes.next()
		var found []observer.LoggedEntry
		for _, e := range l.All() {
			if match(e) {
				found = append(found, e)
			}
		}
		if len(found) >= n {
			return found[:n]
		}
		select {
		case <-changed:
		case <-timer.C:
			t.Fatalf("waited %v for %s (%d of %d entries); logged:\n%s", Timeout, what, len(found), n, l.dump())
		}
	}
}

// Count returns how many entries match accepts.
func (l *Logs) Count(match func(observer.LoggedEntry) bool) int {
	n := 0
	for _, e := range l.All() {
		if match(e) {
			n++
		}
	}
	return n
}

func (l *Logs) dump() string {
	var b strings.Builder
	for _, e := range l.All() {
		fmt.Fprintf(&b, "  %s %q %v\n", e.Level, e.Message, e.ContextMap())
	}
	return b.String()
}

// Message matches an entry by its message: for an entry that has no field
// telling it apart.
func Message(msg string) func(observer.LoggedEntry) bool {
	return func(e observer.LoggedEntry) bool { return e.Message == msg }
}

// Fields matches an entry whose context has each of the given fields with
// the given value, compared as printed (so 2 matches zap.Int's int64 2, and
// a string matches a zap.Stringer's or an error's text).
func Fields(want map[string]any) func(observer.LoggedEntry) bool {
	return func(e observer.LoggedEntry) bool {
		got := e.ContextMap()
		for k, v := range want {
			if g, ok := got[k]; !ok || fmt.Sprint(g) != fmt.Sprint(v) {
				return false
			}
		}
		return true
	}
}
