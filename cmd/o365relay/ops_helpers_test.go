package main

import (
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/o365relay/o365relay/relay/status"
)

// notifySocket stands in for systemd's $NOTIFY_SOCKET: it collects the
// datagrams (sd_notify(3) state lines) a relay sends.
type notifySocket struct {
	path    string
	conn    *net.UnixConn
	mu      sync.Mutex
	msgs    []string
	changed chan struct{}
}

func newNotifySocket(t *testing.T) *notifySocket {
	t.Helper()
	n := &notifySocket{path: filepath.Join(t.TempDir(), "notify"), changed: make(chan struct{})}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n.conn = c
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			k, err := c.Read(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, string(buf[:k]))
			close(n.changed)
			n.changed = make(chan struct{})
			n.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = c.Close() // ends the reader
		<-done
	})
	return n
}

// wait returns the first datagram containing s, waiting up to timeout.
func (n *notifySocket) wait(t *testing.T, s string, timeout time.Duration) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		n.mu.Lock()
		for _, m := range n.msgs {
			if strings.Contains(m, s) {
				n.mu.Unlock()
				return m
			}
		}
		ch := n.changed
		got := append([]string(nil), n.msgs...)
		n.mu.Unlock()
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("no notification containing %q within %v; got %q", s, timeout, got)
		}
	}
}

// getStatus reads the relay's /status.
func getStatus(t *testing.T, adminAddr string) status.Status {
	t.Helper()
	resp, err := http.Get("http://" + adminAddr + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st status.Status
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/status: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// waitStatus polls /status until cond holds (a state the relay reaches by
// itself; the deadline only bounds a failure).
func waitStatus(t *testing.T, p *proc, adminAddr, what string, cond func(status.Status) bool) status.Status {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		st := getStatus(t, adminAddr)
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			b, _ := json.MarshalIndent(st, "", "  ")
			t.Fatalf("/status never showed %s; last:\n%s\nrelay output:\n%s", what, b, p.out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// readyz returns /readyz's HTTP status and body.
func readyz(t *testing.T, adminAddr string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + adminAddr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return resp.StatusCode, b.String()
}

func heldMailbox(st status.Status) bool {
	for _, m := range st.Mailboxes {
		if m.Held {
			return true
		}
	}
	return false
}
