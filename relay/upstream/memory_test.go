package upstream

import (
	"bytes"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"testing"
	"time"

	"github.com/o365relay/o365relay/relay/exchangetest"
)

// genReader yields n bytes of 76-character CRLF lines (the shape of a base64
// attachment) without ever holding more than one 64 KiB block.
type genReader struct {
	left int64
	off  int
}

var genBlock = func() []byte {
	b := make([]byte, 0, 78*840)
	for len(b) < cap(b) {
		b = append(b, bytes.Repeat([]byte{'A' + byte(len(b)/78%26)}, 76)...)
		b = append(b, '\r', '\n')
	}
	return b
}()

func (g *genReader) Read(p []byte) (int, error) {
	if g.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > g.left {
		p = p[:g.left]
	}
	n := 0
	for n < len(p) {
		c := copy(p[n:], genBlock[g.off:])
		n += c
		g.off = (g.off + c) % len(genBlock)
	}
	g.left -= int64(n)
	return n, nil
}

// heapPeak returns how far the live heap rose above its level at the start
// while f ran, sampled every millisecond. The GC target is lowered to 10%
// meanwhile so that garbage (under -race sync.Pool drops items on purpose,
// so TLS and bufio buffers are reallocated) cannot pass for a held buffer,
// while a message held whole stays live for the whole transfer and is seen.
func heapPeak(f func()) uint64 {
	old := debug.SetGCPercent(10)
	defer debug.SetGCPercent(old)
	runtime.GC()
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(sample)
	base := sample[0].Value.Uint64()
	var peak uint64
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		s := []metrics.Sample{{Name: sample[0].Name}}
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(s)
			peak = max(peak, s[0].Value.Uint64())
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	f()
	close(stop)
	<-done
	if peak < base {
		return 0
	}
	return peak - base
}

// TestDeliverStreamsBody: Deliver sends a 64 MiB body (8 MiB under -race) from a reader to the
// fake Exchange over TLS without reading it into memory (issue 8: memory
// does not grow with message size). The heap is the whole process's, the
// fake's side of the connection included (it keeps only size and hash), so
// the test is not parallel. MEMTEST_MB overrides the size.
func TestDeliverStreamsBody(t *testing.T) {
	size := int64(memoryTestBytes) / 78 * 78 // whole lines: the client adds no CRLF of its own
	if v := os.Getenv("MEMTEST_MB"); v != "" {
		mb, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("MEMTEST_MB=%q", v)
		}
		size = int64(mb) << 20 / 78 * 78
	}
	// TLS records, go-smtp's buffered reader and writer on both sides and
	// the fake's 256 KiB header capture fit three times over; a buffered
	// message (8 MiB under -race, 64 MiB otherwise) does not.
	const budget = 4 << 20
	e := newEnv(t, setup{fake: func(o *exchangetest.Options) { o.Discard = true }})
	ctx := ctxT(t)
	// Connect and authenticate first, so the count below is the message's.
	if _, err := e.client.Deliver(ctx, envelope(), bytes.NewReader([]byte(simpleBody))); err != nil {
		t.Fatal(err)
	}
	env := envelope()
	env.Size = size
	var err error
	got := heapPeak(func() { _, err = e.client.Deliver(ctx, env, &genReader{left: size}) })
	if err != nil {
		t.Fatal(err)
	}
	msgs := e.fake.Messages()
	if len(msgs) != 2 || msgs[1].Size != size {
		t.Fatalf("fake Exchange has %d messages, last of %d bytes; want %d", len(msgs), msgs[len(msgs)-1].Size, size)
	}
	if st := e.client.Stats(); st.Dials != 1 {
		t.Errorf("%d dials: the large message did not reuse the pooled connection", st.Dials)
	}
	t.Logf("%d MiB message: Deliver raised the live heap by at most %d KiB (budget %d KiB)", size>>20, got>>10, budget>>10)
	if got > budget {
		t.Errorf("Deliver held %d MiB live for a %d MiB message: the body is being buffered", got>>20, size>>20)
	}
}
