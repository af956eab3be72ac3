// Package memtest owns the measuring tools of the memory regression tests
// (memory does not grow with message size): a reader that yields a
// message of any size without holding it, and heap measurements that a
// message held whole cannot slip past. It imports no "testing" so that
// benchmarks and tests of several packages share one implementation.
package memtest

import (
	"bytes"
	"io"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// LineLen is the length of one generated line, CRLF included.
const LineLen = 78

// block is 840 lines of 76 characters and CRLF (the shape of a base64
// attachment), about 64 KiB, repeated by Reader.
var block = func() []byte {
	b := make([]byte, 0, LineLen*840)
	for len(b) < cap(b) {
		b = append(b, bytes.Repeat([]byte{'A' + byte(len(b)/LineLen%26)}, LineLen-2)...)
		b = append(b, '\r', '\n')
	}
	return b
}()

// Lines returns the first n bytes of the generated text (n ≤ 64 KiB).
func Lines(n int) []byte { return block[:min(n, len(block))] }

type reader struct {
	left int64
	off  int
}

// Reader yields n bytes of generated CRLF lines without ever holding more
// than one 64 KiB block.
func Reader(n int64) io.Reader { return &reader{left: n} }

func (g *reader) Read(p []byte) (int, error) {
	if g.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > g.left {
		p = p[:g.left]
	}
	n := 0
	for n < len(p) {
		c := copy(p[n:], block[g.off:])
		n += c
		g.off = (g.off + c) % len(block)
	}
	g.left -= int64(n)
	return n, nil
}

// HeapPeak returns how far the live heap rose above its level at the start
// while f ran, sampled every millisecond. The GC target is lowered to 10%
// meanwhile so that garbage (under -race sync.Pool drops items on purpose,
// so TLS and bufio buffers are reallocated) cannot pass for a held buffer,
// while a message held whole stays live for the whole transfer and is seen.
// The heap is the whole process's: callers must not run in parallel.
func HeapPeak(f func()) uint64 {
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

// Allocated returns the bytes the whole process allocated while f ran
// (runtime.MemStats.TotalAlloc is cumulative, so garbage collection cannot
// hide a large buffer).
func Allocated(f func()) uint64 {
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}
