package upstream

import (
	"bytes"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/o365relay/o365relay/relay/exchangetest"
	"github.com/o365relay/o365relay/relay/internal/memtest"
)

// benchBody is a message of n bytes in 76-character CRLF lines.
func benchBody(n int) []byte {
	hdr := "From: relay@contoso.test\r\nTo: someone@example.test\r\nSubject: bench\r\n\r\n"
	b := make([]byte, 0, n)
	b = append(b, hdr...)
	for len(b) < n {
		b = append(b, memtest.Lines(min(memtest.LineLen, n-len(b)))...)
	}
	if !bytes.HasSuffix(b, []byte("\r\n")) {
		b = append(b[:len(b)-2], '\r', '\n')
	}
	return b
}

// BenchmarkDeliverLatency is spool → upstream's network half: one message over an
// authenticated, pooled TLS connection to the fake Exchange (which keeps
// only sizes and hashes), with conc deliveries at once (Exchange allows 3
// per mailbox). It reports the latency percentiles, and fails if the pool
// was not used (a handshake per message).
func BenchmarkDeliverLatency(b *testing.B) {
	for _, size := range []int{10 << 10, 1 << 20} {
		for _, conc := range []int{1, 3} {
			b.Run(fmt.Sprintf("size=%dK/conc=%d", size>>10, conc), func(b *testing.B) {
				e := newEnv(b, setup{fake: func(o *exchangetest.Options) { o.Discard = true }})
				ctx := ctxT(b)
				msg := benchBody(size)
				var mu sync.Mutex
				var lat []time.Duration
				next := make(chan struct{})
				var wg sync.WaitGroup
				b.SetBytes(int64(size))
				b.ReportAllocs()
				b.ResetTimer()
				for range conc {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for range next {
							env := testEnv()
							env.Size = int64(len(msg))
							start := time.Now()
							if _, err := e.client.Deliver(ctx, env, bytes.NewReader(msg)); err != nil {
								b.Error(err)
							}
							d := time.Since(start)
							mu.Lock()
							lat = append(lat, d)
							mu.Unlock()
						}
					}()
				}
				for range b.N {
					next <- struct{}{}
				}
				close(next)
				wg.Wait()
				b.StopTimer()
				reportLatency(b, lat)
				if st := e.client.Stats(); st.Handshakes > conc {
					b.Errorf("%d TLS handshakes for %d messages at concurrency %d: the pool was not used", st.Handshakes, b.N, conc)
				}
			})
		}
	}
}

// BenchmarkConnect is XOAUTH2 connection setup: TCP connect, greeting, EHLO,
// STARTTLS with certificate verification, EHLO, AUTH XOAUTH2 with a cached
// token, then QUIT — what a pool miss costs.
func BenchmarkConnect(b *testing.B) {
	e := newEnv(b, setup{})
	ctx := ctxT(b)
	var lat []time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		cn, rerr := e.client.connect(ctx, mailbox)
		if rerr != nil {
			b.Fatal(rerr)
		}
		lat = append(lat, time.Since(start))
		cn.close(true)
	}
	b.StopTimer()
	reportLatency(b, lat)
	if st := e.fake.Stats(); st.Auths < b.N || st.TLSSessions < b.N {
		b.Errorf("fake saw %d TLS sessions and %d AUTHs for %d connects", st.TLSSessions, st.Auths, b.N)
	}
}

func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
