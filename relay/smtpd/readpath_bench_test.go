package smtpd

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/internal/memtest"
)

// The intake's read path on its own: commands, DATA framing, the body
// checks, the Received: header and the log lines, into a sink that
// discards the body (no spool, no fsync). The client is raw bytes on a
// socket, so what is allocated is nearly all the server's.

// discardSink reads the body and keeps nothing.
type discardSink struct{}

func (discardSink) Submit(_ context.Context, env *envelope.Envelope, body io.Reader) (string, error) {
	n, err := io.Copy(io.Discard, struct{ io.Reader }{body}) // (a MultiReader's WriteTo allocates 32 KiB)
	env.Size = n
	return "OK queued", err
}

// rawClient speaks SMTP with pre-built byte strings.
type rawClient struct {
	conn net.Conn
	r    *bufio.Reader
}

func dialRaw(tb testing.TB, addr string) *rawClient {
	tb.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		tb.Fatal(err)
	}
	if err := conn.SetDeadline(time.Now().Add(10 * time.Minute)); err != nil {
		tb.Fatal(err)
	}
	c := &rawClient{conn: conn, r: bufio.NewReader(conn)}
	if err := c.expect('2'); err != nil { // greeting
		tb.Fatal(err)
	}
	if _, err := conn.Write([]byte("EHLO app.test\r\n")); err != nil {
		tb.Fatal(err)
	}
	if err := c.expect('2'); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	return c
}

// expect reads one reply (all its lines) and checks its first digit.
func (c *rawClient) expect(class byte) error {
	for {
		line, err := c.r.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) < 4 || line[0] != class {
			return fmt.Errorf("reply %q", line)
		}
		if line[3] == ' ' {
			return nil
		}
	}
}

// send runs one transaction: data is the message, dot-stuffed, ending in
// CRLF.CRLF.
func (c *rawClient) send(data []byte) error {
	for _, step := range []struct {
		out   string
		class byte
	}{{"MAIL FROM:<app@example.com>\r\n", '2'}, {"RCPT TO:<someone@example.org>\r\n", '2'}, {"DATA\r\n", '3'}} {
		if _, err := io.WriteString(c.conn, step.out); err != nil {
			return err
		}
		if err := c.expect(step.class); err != nil {
			return err
		}
	}
	if _, err := c.conn.Write(data); err != nil {
		return err
	}
	return c.expect('2')
}

// readPathMessage is a message of about size octets with its end of data.
func readPathMessage(size int) []byte {
	var b bytes.Buffer
	b.WriteString("From: <app@example.com>\r\nTo: <someone@example.org>\r\nSubject: read path\r\n\r\n")
	if _, err := io.Copy(&b, memtest.Reader(int64(size/memtest.LineLen*memtest.LineLen))); err != nil {
		panic(err)
	}
	b.WriteString(".\r\n")
	return b.Bytes()
}

// readPathServer serves with the daemon's kind of logger (JSON, info),
// writing to nowhere.
func readPathServer(tb testing.TB) *Server {
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	log := zap.New(zapcore.NewCore(enc, zapcore.AddSync(io.Discard), zap.InfoLevel))
	return serve(tb, Options{
		Addr:            "127.0.0.1:0",
		AllowedNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		Hostname:        "relay.test",
		Sink:            discardSink{},
		Route:           allowAll,
		Logger:          log,
	})
}

// BenchmarkIntakeReadPath is one session sending message after message
// (B/op and allocs/op are nearly all the server's). Report-only.
func BenchmarkIntakeReadPath(b *testing.B) {
	for _, size := range []int{10 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("size=%dK", size>>10), func(b *testing.B) {
			srv := readPathServer(b)
			c := dialRaw(b, srv.Addr().String())
			msg := readPathMessage(size)
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if err := c.send(msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestIntakeAllocationsPerMessage bounds what the read path allocates per
// 10 KB message: the garbage collector's work (CPU, and the heap's
// headroom) grows with it. A read buffer allocated per message (32 KiB, as
// before the buffers were pooled) fails it. Not parallel: the count is the
// whole process's.
func TestIntakeAllocationsPerMessage(t *testing.T) {
	const n = 200
	// Octets per message: about 3 KiB measured (16 KiB under -race).
	const budget = perMessageAllocBudget
	srv := readPathServer(t)
	c := dialRaw(t, srv.Addr().String())
	msg := readPathMessage(10 << 10)
	for range 10 { // warm up: pools, buffers, the logger's
		if err := c.send(msg); err != nil {
			t.Fatal(err)
		}
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range n {
		if err := c.send(msg); err != nil {
			t.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)
	per := (after.TotalAlloc - before.TotalAlloc) / n
	t.Logf("%d octets and %d allocations per message", per, (after.Mallocs-before.Mallocs)/n)
	if per > budget {
		t.Errorf("the intake allocated %d octets per 10 KB message; budget %d", per, budget)
	}
}
