package spool

import (
	"io"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/internal/memtest"
)

// memoryMessageBytes is the size streamed by the memory tests: far above
// the heap budget, so a body read into memory whole fails them. MEMTEST_MB
// overrides it.
func memoryMessageBytes(t *testing.T) int64 {
	n := int64(64 << 20)
	if v := os.Getenv("MEMTEST_MB"); v != "" {
		mb, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("MEMTEST_MB=%q", v)
		}
		n = int64(mb) << 20
	}
	return n
}

// heapBudget is what streaming may allocate for one message of any size:
// copy buffers, the envelope, the record header. A whole 64 MiB message is
// sixteen times over it (a bytes.Buffer holding it would allocate about
// twice its size).
const heapBudget = 4 << 20

// TestPutAndBodyStream: Put writes a 64 MiB body from a reader to disk, and
// Body streams it back, without either reading the message into memory
// (memory does not grow with message size). Not parallel: the
// allocation count is the whole process's, so nothing else may run.
func TestPutAndBodyStream(t *testing.T) {
	size := memoryMessageBytes(t)
	// Fsync off: durability is not what this test is about, and fsyncing
	// 64 MiB would only slow the suite.
	s := open_(t, t.TempDir(), func(o *Options) { o.Fsync = false })
	env := &envelope.Envelope{ID: envelope.NewID(time.Now()), From: "app@example.com",
		To: []string{"a@example.org"}, Mailbox: "relay@example.com", Received: time.Now()}
	var putErr error
	put := memtest.Allocated(func() { putErr = s.Put(env, memtest.Reader(size)) })
	if putErr != nil {
		t.Fatal(putErr)
	}
	if env.Size != size {
		t.Fatalf("stored %d bytes of %d", env.Size, size)
	}
	var n int64
	var readErr error
	read := memtest.Allocated(func() {
		var b io.ReadCloser
		if b, readErr = s.Body(env.ID); readErr != nil {
			return
		}
		n, readErr = io.Copy(io.Discard, b)
		if cerr := b.Close(); readErr == nil {
			readErr = cerr
		}
	})
	if readErr != nil || n != size {
		t.Fatalf("read back %d of %d bytes: %v", n, size, readErr)
	}
	t.Logf("%d MiB message: Put allocated %d KiB, Body+read %d KiB (budget %d KiB)", size>>20, put>>10, read>>10, heapBudget>>10)
	if put > heapBudget {
		t.Errorf("Put allocated %d MiB for a %d MiB message: the body is being buffered", put>>20, size>>20)
	}
	if read > heapBudget {
		t.Errorf("Body allocated %d MiB for a %d MiB message: the body is being buffered", read>>20, size>>20)
	}
}
