package delivery

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/o365relay/o365relay/config/tlstest"
	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/exchangetest"
	"github.com/o365relay/o365relay/relay/spool"
	"github.com/o365relay/o365relay/relay/upstream"
	"github.com/o365relay/o365relay/token"
)

// staticTokens hands out one token signed for the fake Exchange.
type staticTokens struct{ tok token.Token }

func (s staticTokens) Token(context.Context) (token.Token, error) { return s.tok, nil }
func (s staticTokens) Refresh(context.Context, token.Token) (token.Token, error) {
	return s.tok, nil
}

// BenchmarkSpoolToUpstream is the whole delivery of one queued message, as
// a worker does it: state recorded durably before the attempt, the body
// streamed from the spool file over a pooled STARTTLS + XOAUTH2 connection to
// the fake Exchange, the record removed durably. Fsync is on, as in the
// daemon.
func BenchmarkSpoolToUpstream(b *testing.B) {
	for _, size := range []int{10 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("size=%dK", size>>10), func(b *testing.B) {
			const mbx = "relay@contoso.example"
			key, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				b.Fatal(err)
			}
			ca, err := tlstest.NewCA("delivery bench CA")
			if err != nil {
				b.Fatal(err)
			}
			cert, err := ca.ServerCert()
			if err != nil {
				b.Fatal(err)
			}
			fake, err := exchangetest.NewServer(exchangetest.Options{
				TLS: cert, TokenKey: &key.PublicKey, Tenant: "tenant-1", Discard: true,
				Mailboxes: map[string]exchangetest.Mailbox{mbx: {Apps: []string{"app-1"}}},
			})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() {
				if err := fake.Close(); err != nil {
					b.Error(err)
				}
			})
			exp := time.Now().Add(time.Hour)
			v, err := exchangetest.SignToken(key, exchangetest.Claims{AppID: "app-1", Tenant: "tenant-1", Expires: exp})
			if err != nil {
				b.Fatal(err)
			}
			up, err := upstream.New(upstream.Options{Addr: fake.Addr(), ServerName: "localhost", RootCAs: ca.Pool(),
				Tokens: staticTokens{token.Token{Value: v, ExpiresOn: exp}}, HelloName: "relay.test"})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() {
				if err := up.Close(); err != nil {
					b.Error(err)
				}
			})
			sp, err := spool.Open(spool.Options{Dir: b.TempDir(), Fsync: true})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() {
				if err := sp.Close(); err != nil {
					b.Error(err)
				}
			})
			s, err := New(withSettings(Options{Spool: sp, Forwarder: up}))
			if err != nil {
				b.Fatal(err)
			}
			body := append([]byte("From: <"+mbx+">\r\nSubject: bench\r\n\r\n"), bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n"), size/66)...)
			ids := make([]envelope.ID, b.N)
			for i := range ids {
				env := &envelope.Envelope{ID: envelope.NewID(time.Now()), From: mbx, To: []string{"someone@fabrikam.example"},
					Mailbox: mbx, Received: time.Now()}
				if err := sp.Put(env, bytes.NewReader(body)); err != nil {
					b.Fatal(err)
				}
				ids[i] = env.ID
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			lat := make([]time.Duration, 0, b.N)
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			b.ResetTimer()
			for _, id := range ids {
				start := time.Now()
				out, err := s.DeliverNow(ctx, id)
				if err != nil || out == nil || len(out.Delivered) != 1 {
					b.Fatalf("DeliverNow: %+v, %v", out, err)
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
			if items, _, _ := sp.Stats(); items != 0 {
				b.Errorf("%d messages left in the spool", items)
			}
			if st := up.Stats(); st.Handshakes != 1 {
				b.Errorf("%d TLS handshakes for %d sequential messages; the pool should need one", st.Handshakes, b.N)
			}
		})
	}
}
