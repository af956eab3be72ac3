package control

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/spool"
	"github.com/o365relay/o365relay/relay/status"
)

func newID(t *testing.T, i int) envelope.ID {
	t.Helper()
	return envelope.NewID(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).Add(time.Duration(i) * time.Millisecond))
}

func put(t *testing.T, sp *spool.Spool, i int, mailbox string) envelope.ID {
	t.Helper()
	env := &envelope.Envelope{ID: newID(t, i), From: "a@contoso.example", To: []string{"b@fabrikam.example"}, Mailbox: mailbox, Received: time.Now()}
	if err := sp.Put(env, strings.NewReader("Subject: x\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	return env.ID
}

// serve runs a control server for a spool in a directory whose path is too
// long for sun_path when deep is set.
func serve(t *testing.T, deep bool) (*Client, *spool.Spool, *[]string, string) {
	t.Helper()
	dir := t.TempDir()
	if deep {
		dir = filepath.Join(dir, strings.Repeat("d", 60), strings.Repeat("e", 60))
	}
	sp, err := spool.Open(spool.Options{Dir: dir, Fsync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Close() })
	var events []string
	srv, err := Listen(SocketPath(dir), Daemon{
		Admin: &SpoolAdmin{Spool: sp,
			Retried: func(id envelope.ID, mb string) { events = append(events, "retried "+string(id)+" "+mb) },
			Deleted: func(id envelope.ID) { events = append(events, "deleted "+string(id)) }},
		Status: func(context.Context) status.Status { return status.Status{Queue: status.Queue{Messages: 7}} },
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	t.Cleanup(func() {
		if err := srv.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
		if err := <-done; err != nil {
			t.Error(err)
		}
		if _, err := os.Stat(SocketPath(dir)); !os.IsNotExist(err) {
			t.Errorf("socket left behind: %v", err)
		}
	})
	if fi, err := os.Stat(SocketPath(dir)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket: %v, mode %v, want 0600", err, fi.Mode())
	}
	c, err := Dial(context.Background(), SocketPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, sp, &events, dir
}

func TestRoundTrip(t *testing.T) {
	for _, deep := range []bool{false, true} {
		t.Run(map[bool]string{false: "short", true: "path beyond sun_path"}[deep], func(t *testing.T) {
			ctx := context.Background()
			c, sp, events, dir := serve(t, deep)
			if deep && len(SocketPath(dir)) <= maxSunPath {
				t.Fatalf("path %d bytes: not deep enough", len(SocketPath(dir)))
			}
			a, b := put(t, sp, 1, "x@contoso.example"), put(t, sp, 2, "y@contoso.example")
			st, err := c.Status(ctx)
			if err != nil || st.Queue.Messages != 7 {
				t.Fatalf("status %+v, %v", st, err)
			}
			ms, err := c.List(ctx)
			if err != nil || len(ms) != 2 || ms[0].Envelope.ID != a || ms[0].Where != InQueue {
				t.Fatalf("list %+v, %v", ms, err)
			}
			m, err := c.Get(ctx, b)
			if err != nil || m.Envelope.Mailbox != "y@contoso.example" {
				t.Fatalf("get %+v, %v", m, err)
			}
			if err := c.Retry(ctx, b); err != nil {
				t.Fatal(err)
			}
			if err := c.Delete(ctx, a); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Get(ctx, a); !errors.Is(err, spool.ErrNotFound) {
				t.Errorf("get of a deleted message: %v, want ErrNotFound", err)
			}
			if err := c.Delete(ctx, a); !errors.Is(err, spool.ErrNotFound) {
				t.Errorf("second delete: %v, want ErrNotFound", err)
			}
			// A failed message is found in failed/ and retried back.
			if err := sp.Fail(b, spool.State{Final: "550 5.1.1 no such user"}); err != nil {
				t.Fatal(err)
			}
			fs, err := c.ListFailed(ctx)
			if err != nil || len(fs) != 1 || fs[0].Where != InFailed || fs[0].State.Final == "" {
				t.Fatalf("failed %+v, %v", fs, err)
			}
			if n, err := c.RetryAll(ctx); err != nil || n != 1 {
				t.Fatalf("retry all: %d, %v", n, err)
			}
			if m, err := c.Get(ctx, b); err != nil || m.Where != InQueue {
				t.Fatalf("after retry all: %+v, %v", m, err)
			}
			want := []string{"retried " + string(b) + " y@contoso.example", "deleted " + string(a), "retried " + string(b) + " y@contoso.example"}
			if strings.Join(*events, "|") != strings.Join(want, "|") {
				t.Errorf("scheduler told %q, want %q", *events, want)
			}
		})
	}
}

// No daemon: a missing socket and a stale one (nothing listening) are
// both ErrNoDaemon; a malformed ID is refused by the server.
func TestNoDaemonAndBadID(t *testing.T) {
	dir := t.TempDir()
	if _, err := Dial(context.Background(), SocketPath(dir)); !errors.Is(err, ErrNoDaemon) {
		t.Errorf("missing socket: %v, want ErrNoDaemon", err)
	}
	// A daemon killed with SIGKILL leaves its socket file behind.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: SocketPath(dir), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(SocketPath(dir)); err != nil {
		t.Fatal(err)
	}
	if _, err := Dial(context.Background(), SocketPath(dir)); !errors.Is(err, ErrNoDaemon) {
		t.Errorf("stale socket: %v, want ErrNoDaemon", err)
	}
	// The next daemon replaces it.
	srv, err := Listen(SocketPath(dir), Daemon{}, nil)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	c, _, _, _ := serve(t, false)
	if err := c.do(context.Background(), "GET", "/v1/messages/..%2fetc", &Message{}); err == nil || !strings.Contains(err.Error(), "not a message ID") {
		t.Errorf("malformed ID: %v", err)
	}
}
