package upstream

import (
	"bytes"
	"os"
	"strconv"
	"testing"

	"github.com/o365relay/o365relay/relay/exchangetest"
	"github.com/o365relay/o365relay/relay/internal/memtest"
)

// TestDeliverStreamsBody: Deliver sends a 64 MiB body (8 MiB under -race) from a reader to the
// fake Exchange over TLS without reading it into memory (memory
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
	if _, err := e.client.Deliver(ctx, testEnv(), bytes.NewReader([]byte(simpleBody))); err != nil {
		t.Fatal(err)
	}
	env := testEnv()
	env.Size = size
	var err error
	got := memtest.HeapPeak(func() { _, err = e.client.Deliver(ctx, env, memtest.Reader(size)) })
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
