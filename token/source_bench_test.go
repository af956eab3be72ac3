package token

import (
	"context"
	"testing"
	"time"
)

// BenchmarkTokenCachedAfterFetch is the message path's token cost in steady state:
// EntraSource.Token when a token is held. It must not touch the network
// (docs/design.md#no-token-request-on-the-message-path); the benchmark fails if
// the fake Entra ID sees a second request. Parallel: every delivery worker
// asks at once. Unlike BenchmarkTokenCached (a hand-filled cache) the token
// here came from a real fetch against the fake Entra ID.
func BenchmarkTokenCachedAfterFetch(b *testing.B) {
	f := newFixture(b)
	src := f.source(b, f.certCred(b, 0))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := src.Token(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := src.Token(ctx); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	if n := f.srv.TokenRequests(); n != 1 {
		b.Errorf("%d token requests to Entra ID; a cached token must cost none", n)
	}
}
