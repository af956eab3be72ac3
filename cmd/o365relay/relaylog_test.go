package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/o365relay/o365relay/config/waitfor"
)

// output collects a child's stdout and stderr; tests read it, and wait for
// what it logs, while it runs. Every Write wakes the waiters (a positive
// signal: nothing polls the buffer).
type output struct {
	mu      sync.Mutex
	b       bytes.Buffer
	parsed  int     // bytes of b decoded into entries so far (whole lines)
	entries []entry // the JSON log lines among them
	changes waitfor.Changes
}

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	n, err := o.b.Write(p)
	o.mu.Unlock()
	o.changes.Notify()
	return n, err
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.String()
}

// Entries returns the relay's JSON log lines written so far, decoded
// (complete lines only; other output is skipped).
func (o *output) Entries() []entry {
	o.mu.Lock()
	defer o.mu.Unlock()
	rest := o.b.Bytes()[o.parsed:]
	for {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			break
		}
		var e entry
		if json.Unmarshal(rest[:i], &e) == nil && e["msg"] != nil {
			o.entries = append(o.entries, e)
		}
		o.parsed += i + 1
		rest = rest[i+1:]
	}
	return o.entries
}

// entry is one line of the relay's JSON log: "level", "ts", "logger",
// "msg" and the line's own fields.
type entry map[string]any

// fields are what an entry must carry, compared as printed (so 554 matches
// the JSON number 554).
type fields map[string]any

func (e entry) has(want fields) bool {
	for k, v := range want {
		if g, ok := e[k]; !ok || fmt.Sprint(g) != fmt.Sprint(v) {
			return false
		}
	}
	return true
}

// str is a string field ("" if absent or not a string).
func (e entry) str(k string) string {
	s, _ := e[k].(string)
	return s
}

// time is a time field (RFC 3339, as the relay's encoder writes "ts").
func (e entry) time(t *testing.T, k string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339Nano, e.str(k))
	if err != nil {
		t.Fatalf("field %s of %v: %v", k, e, err)
	}
	return v
}

// num is a numeric field.
func (e entry) num(k string) float64 {
	f, _ := e[k].(float64)
	return f
}

func (e entry) String() string {
	b, _ := json.Marshal(map[string]any(e))
	return string(b)
}

// logged returns the entries with every field of want, in order.
func (p *proc) logged(want fields) []entry {
	var out []entry
	for _, e := range p.out.Entries() {
		if e.has(want) {
			out = append(out, e)
		}
	}
	return out
}

// waitLogged waits until the relay has logged n entries with every field
// of want and returns them (the relay's output is printed if the test
// fails).
func (p *proc) waitLogged(what string, n int, want fields) []entry {
	p.t.Helper()
	var got []entry
	waitfor.On(p.t, &p.out.changes, what+" (logged "+want.String()+")", func() bool {
		got = p.logged(want)
		return len(got) >= n
	})
	return got[:n]
}

// waitLog waits for the first entry with every field of want.
func (p *proc) waitLog(what string, want fields) entry {
	p.t.Helper()
	return p.waitLogged(what, 1, want)[0]
}

// waitOutput waits until the relay's output (log or not) contains s: for
// what is not a field of a log entry.
func (p *proc) waitOutput(what, s string) {
	p.t.Helper()
	waitfor.On(p.t, &p.out.changes, fmt.Sprintf("%s (%q in the relay's output)", what, s), func() bool {
		return strings.Contains(p.out.String(), s)
	})
}

func (f fields) String() string {
	b, _ := json.Marshal(map[string]any(f))
	return string(b)
}

// waitUntil waits until cond holds, looking again whenever the relay
// writes output: for a condition on what it logged.
func (p *proc) waitUntil(what string, cond func() bool) {
	p.t.Helper()
	waitfor.On(p.t, &p.out.changes, what, cond)
}
