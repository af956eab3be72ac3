package delivery

import (
	"fmt"
	"testing"
	"time"

	"github.com/o365relay/o365relay/relay/upstream"
)

// BenchmarkDeliveryPooling drains b.N queued messages through the
// scheduler (3 workers, one mailbox), the upstream client and verified TLS
// + XOAUTH2 to the fake Exchange, with the connection pool on and off, and
// reports messages per second and upstream TLS handshakes and AUTHs per
// 1,000 messages. The spool runs without fsync so that the figure is the
// delivery path's, not the disk's (BenchmarkPut in relay/spool measures
// that).
//
//	go test -run '^$' -bench DeliveryPooling -benchtime 1000x ./relay/delivery
func BenchmarkDeliveryPooling(b *testing.B) {
	for _, pool := range []bool{true, false} {
		b.Run(fmt.Sprintf("pool=%v", pool), func(b *testing.B) {
			e := newExoEnv(b, exoSetup{discard: true, upstream: func(o *upstream.Options) { o.PoolDisabled = !pool }})
			ids := e.put(b, b.N, exoBox, exoBox)
			b.ResetTimer()
			start := time.Now()
			e.run(b)
			el := time.Since(start)
			b.StopTimer()
			e.check(b, ids, 0, 3)
			fs, us := e.fake.Stats(), e.up.Stats()
			b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
			b.ReportMetric(float64(fs.TLSSessions)*1000/float64(b.N), "handshakes/1000msgs")
			b.ReportMetric(float64(us.Auths)*1000/float64(b.N), "auths/1000msgs")
		})
	}
}
