package smtpd

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/o365relay/o365relay/relay/internal/memtest"
	"github.com/o365relay/o365relay/relay/spool"
)

// BenchmarkAcceptToSpool is the intake's hot path end to end: conc
// go-smtp clients, each on its own TCP connection kept across messages, send
// a message; the listener checks it, adds the Received: header and streams
// it into spool.Put with fsync on (file fsync, rename, group-committed
// directory fsync) before the 250. time-to-250 percentiles are from the end
// of the data to the reply; compare them with the disk's fsync latency
// (o365relay-load prints it).
func BenchmarkAcceptToSpool(b *testing.B) {
	for _, size := range []int{10 << 10, 1 << 20} {
		for _, conc := range []int{1, 8} {
			b.Run(fmt.Sprintf("size=%dK/conc=%d", size>>10, conc), func(b *testing.B) {
				benchAccept(b, size, conc)
			})
		}
	}
}

func benchAccept(b *testing.B, size, conc int) {
	sp, err := spool.Open(spool.Options{Dir: b.TempDir(), Fsync: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := sp.Close(); err != nil {
			b.Error(err)
		}
	})
	srv := serve(b, Options{
		Addr:            "127.0.0.1:0",
		AllowedNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		Hostname:        "relay.test",
		Sink:            spoolSink{sp},
		Route:           allowAll,
	})
	body, err := io.ReadAll(memtest.Reader(int64(size / 78 * 78)))
	if err != nil {
		b.Fatal(err)
	}
	msg := append([]byte("From: <app@example.com>\r\nSubject: bench\r\n\r\n"), body...)

	var mu sync.Mutex
	var lat []time.Duration
	next := make(chan struct{})
	var wg sync.WaitGroup
	clients := make([]*smtp.Client, conc)
	for i := range clients {
		conn, err := net.DialTimeout("tcp", srv.Addr().String(), 5*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		if err := conn.SetDeadline(time.Now().Add(10 * time.Minute)); err != nil {
			b.Fatal(err)
		}
		c := smtp.NewClient(conn)
		if err := c.Hello("app.test"); err != nil {
			b.Fatal(err)
		}
		clients[i] = c
	}
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	b.ResetTimer()
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				d, err := sendTimed(c, msg)
				if err != nil {
					b.Error(err)
					continue
				}
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
	for _, c := range clients {
		if err := c.Quit(); err != nil {
			b.Error(err)
		}
	}
	if items, _, _ := sp.Stats(); items != b.N {
		b.Errorf("spool holds %d of %d messages", items, b.N)
	}
	if len(lat) > 0 {
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	}
}

// sendTimed sends one message and returns the time from the end of the data
// to the 250.
func sendTimed(c *smtp.Client, msg []byte) (time.Duration, error) {
	if err := c.Mail("app@example.com", nil); err != nil {
		return 0, err
	}
	if err := c.Rcpt("someone@example.org", nil); err != nil {
		return 0, err
	}
	w, err := c.Data()
	if err != nil {
		return 0, err
	}
	if _, err := bytes.NewReader(msg).WriteTo(w); err != nil {
		return 0, err
	}
	start := time.Now()
	if err := w.Close(); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}
