package smtpd

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/internal/memtest"
	"github.com/o365relay/o365relay/relay/spool"
)

// spoolSink is the daemon's sink reduced to its first step: the body goes
// from the DATA reader straight into spool.Put.
type spoolSink struct{ sp *spool.Spool }

func (k spoolSink) Submit(_ context.Context, env *envelope.Envelope, body io.Reader) (string, error) {
	if err := k.sp.Put(env, body); err != nil {
		return "", err
	}
	return "OK " + string(env.ID) + " queued", nil
}

// TestIntakeStreamsToSpool: a large message goes from the client's socket
// through go-smtp's DATA reader, the line-ending and hop checks and the
// Received: header into the spool file without being read into memory
// (memory does not grow with message size). The heap is the whole process's
// (the client's side included),
// so the test is not parallel.
func TestIntakeStreamsToSpool(t *testing.T) {
	size := int64(memoryTestBytes) / 78 * 78
	// go-smtp's and the line checker's buffers fit several times over.
	const budget = 3 << 20
	sp, err := spool.Open(spool.Options{Dir: t.TempDir(), Fsync: false}) // durability is not under test
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sp.Close(); err != nil {
			t.Error(err)
		}
	})
	srv := serve(t, Options{
		Addr:            "127.0.0.1:0",
		AllowedNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		Hostname:        "relay.test",
		Sink:            spoolSink{sp},
		Route:           allowAll,
		MaxMessageBytes: 100 << 20,
	})

	conn, err := net.DialTimeout("tcp", srv.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.SetDeadline(time.Now().Add(2 * time.Minute)); err != nil {
		t.Fatal(err)
	}
	c := smtp.NewClient(conn)
	defer func() { _ = c.Close() }() // after QUIT
	if err := c.Hello("app.test"); err != nil {
		t.Fatal(err)
	}
	send := func() error {
		if err := c.Mail("app@example.com", nil); err != nil {
			return err
		}
		if err := c.Rcpt("someone@example.org", nil); err != nil {
			return err
		}
		w, err := c.Data()
		if err != nil {
			return err
		}
		if _, err := io.Copy(w, memtest.Reader(size)); err != nil {
			return err
		}
		return w.Close()
	}
	var sendErr error
	got := memtest.HeapPeak(func() { sendErr = send() })
	if sendErr != nil {
		t.Fatal(sendErr)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	items, bytes, _ := sp.Stats()
	if items != 1 || bytes < size {
		t.Fatalf("spool has %d messages, %d bytes; want 1 of at least %d", items, bytes, size)
	}
	t.Logf("%d MiB message: intake raised the live heap by at most %d KiB (budget %d KiB)", size>>20, got>>10, budget>>10)
	if got > budget {
		t.Errorf("intake held %d MiB live for a %d MiB message: the body is being buffered", got>>20, size>>20)
	}
}
