package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/o365relay/o365relay/config/waitfor"
	"github.com/o365relay/o365relay/relay/status"
)

// notifySocket stands in for systemd's $NOTIFY_SOCKET: it collects the
// datagrams (sd_notify(3) state lines) a relay sends.
type notifySocket struct {
	path    string
	conn    *net.UnixConn
	mu      sync.Mutex
	msgs    []string
	changes waitfor.Changes // a datagram arrived
}

func newNotifySocket(t *testing.T) *notifySocket {
	t.Helper()
	n := &notifySocket{path: filepath.Join(t.TempDir(), "notify")}
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
			n.mu.Unlock()
			n.changes.Notify()
		}
	}()
	t.Cleanup(func() {
		_ = c.Close() // ends the reader
		<-done
	})
	return n
}

// wait returns the first datagram containing s.
func (n *notifySocket) wait(t *testing.T, s string) string {
	t.Helper()
	var found string
	waitfor.On(t, &n.changes, fmt.Sprintf("a notification containing %q", s), func() bool {
		n.mu.Lock()
		defer n.mu.Unlock()
		for _, m := range n.msgs {
			if strings.Contains(m, s) {
				found = m
				return true
			}
		}
		return false
	})
	return found
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
// itself; polled, as the relay's HTTP endpoints are all a test sees of it).
func waitStatus(t *testing.T, adminAddr, what string, cond func(status.Status) bool) status.Status {
	t.Helper()
	var st status.Status
	waitfor.Check(t, "/status to show "+what, func() error {
		st = getStatus(t, adminAddr)
		if !cond(st) {
			b, _ := json.MarshalIndent(st, "", "  ")
			return fmt.Errorf("/status:\n%s", b)
		}
		return nil
	})
	return st
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
