package spool

import (
	"bytes"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/o365relay/o365relay/relay/envelope"
)

// BenchmarkPut measures durability's cost: sizes × concurrency × fsync.
// With 32 concurrent Puts the group committer shares directory fsyncs.
func BenchmarkPut(b *testing.B) {
	for _, size := range []int{1 << 10, 100 << 10} {
		for _, conc := range []int{1, 32} {
			for _, fsync := range []bool{true, false} {
				b.Run(fmt.Sprintf("size=%dK/conc=%d/fsync=%v", size>>10, conc, fsync), func(b *testing.B) {
					s := open_(b, b.TempDir(), func(o *Options) { o.Fsync = fsync })
					body := bytes.Repeat([]byte("x"), size)
					var mu sync.Mutex
					var lat []time.Duration
					var n int64
					var wg sync.WaitGroup
					next := make(chan struct{})
					b.SetBytes(int64(size))
					b.ResetTimer()
					for range conc {
						wg.Add(1)
						go func() {
							defer wg.Done()
							for range next {
								env := &envelope.Envelope{ID: envelope.NewID(time.Now()), To: []string{"a@example.org"}}
								start := time.Now()
								if err := s.Put(env, bytes.NewReader(body)); err != nil {
									b.Error(err)
								}
								d := time.Since(start)
								mu.Lock()
								lat = append(lat, d)
								n++
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
					sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
					b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
					b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
				})
			}
		}
	}
}
