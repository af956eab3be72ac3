package relay

import (
	"context"
	"crypto/rsa"
	"crypto/tls"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/config/tlstest"
	"github.com/o365relay/o365relay/config/waitfor"
	"github.com/o365relay/o365relay/token"
)

// The file watcher's interval, on the listener's certificate, in a
// testing/synctest bubble: the watcher's ticker runs on the bubble's clock,
// so "picked up at the next tick, not before" and "refused once, not at
// every tick" are exact facts at the instant synctest.Wait returns (every
// goroutine, the watcher included, has done what it can and waits). The
// Entra certificate's half of the watcher asks Entra ID over the network
// before it rotates, which a bubble cannot isolate; reload_test.go drives
// that half by hand on an injected clock.
func TestListenerCertificateWatcherInterval(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		const every = 5 * time.Second
		ca, err := tlstest.NewCA("watcher test CA")
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		certPath, keyPath := filepath.Join(dir, "listener.crt"), filepath.Join(dir, "listener.key")
		issue := func() tls.Certificate {
			c, err := ca.ServerCert("127.0.0.1")
			if err != nil {
				t.Fatal(err)
			}
			return c
		}
		write := func(path string, data []byte) {
			if err := os.WriteFile(path+".tmp", data, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(path+".tmp", path); err != nil {
				t.Fatal(err)
			}
		}
		writeCert := func(c tls.Certificate) {
			write(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}))
		}
		writeKey := func(c tls.Certificate) { write(keyPath, tlstest.PKCS1PEM(c.PrivateKey.(*rsa.PrivateKey))) }

		log, logs := waitfor.NewLogs(zap.InfoLevel)
		a, b, c := issue(), issue(), issue()
		writeCert(a)
		writeKey(a)
		// A client-secret source: no certificate of its own to watch, and
		// no request is made.
		tokens, err := token.NewSource(token.Options{TenantID: "00000000-0000-0000-0000-0000000000aa", ClientID: "11111111-2222-3333-4444-555555555555",
			AuthorityHost: config.DefaultAuthorityHost, Scope: config.DefaultScope,
			Credential: token.Credential{ClientSecret: "not-used"}})
		if err != nil {
			t.Fatal(err)
		}
		rl := &Relay{log: log, tokens: tokens, clock: time.Now,
			listenTLS: &listenerTLS{certPath: certPath, keyPath: keyPath, log: log}}
		if _, err := rl.listenTLS.reload(); err != nil {
			t.Fatal(err)
		}
		serving := func() string { return rl.listenTLS.cur.Load().Certificates[0].Leaf.SerialNumber.String() }
		loaded := func(serial string) []observer.LoggedEntry {
			return logs.FilterMessage("listener certificate loaded").FilterField(zap.String("serial", serial)).All()
		}
		refusals := func() int {
			return logs.Count(func(e observer.LoggedEntry) bool {
				return e.Level == zap.ErrorLevel && e.ContextMap()["path"] == certPath
			})
		}
		start := time.Now()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			rl.watchFiles(ctx, every)
		}()
		t.Cleanup(func() {
			cancel()
			<-done
			if err := tokens.Close(); err != nil {
				t.Error(err)
			}
		})

		// A rotation written now is served from the next tick on, not before.
		writeKey(b)
		writeCert(b)
		time.Sleep(every - time.Nanosecond)
		synctest.Wait()
		if serving() != a.Leaf.SerialNumber.String() {
			t.Fatal("the new certificate was picked up before the watcher's tick")
		}
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		if got := loaded(b.Leaf.SerialNumber.String()); len(got) != 1 || !got[0].Time.Equal(start.Add(every)) || serving() != b.Leaf.SerialNumber.String() {
			t.Fatalf("at the first tick: loaded %v, serving %s; want %s loaded at +%v", got, serving(), b.Leaf.SerialNumber, every)
		}

		// Half a rotation (a new certificate, the old key): refused at the
		// next tick, once, however many ticks see it; the pair in use stays.
		writeCert(c)
		time.Sleep(every)
		synctest.Wait()
		if n := refusals(); n != 1 {
			t.Fatalf("%d refusals logged at the tick after the half rotation, want 1", n)
		}
		time.Sleep(3 * every)
		synctest.Wait()
		if n := refusals(); n != 1 || serving() != b.Leaf.SerialNumber.String() {
			t.Errorf("after three more ticks: %d refusals, serving %s; want the one refusal and %s still served", n, serving(), b.Leaf.SerialNumber)
		}
		// The rest of the rotation: loaded at the next tick.
		writeKey(c)
		time.Sleep(every)
		synctest.Wait()
		if got := loaded(c.Leaf.SerialNumber.String()); len(got) != 1 || !got[0].Time.Equal(start.Add(6*every)) || serving() != c.Leaf.SerialNumber.String() {
			t.Errorf("completed rotation: loaded %v, serving %s; want %s loaded at +%v", got, serving(), c.Leaf.SerialNumber, 6*every)
		}

		// A key file that goes missing: reported once, not at every tick;
		// the pair in use stays.
		if err := os.Remove(keyPath); err != nil {
			t.Fatal(err)
		}
		time.Sleep(4 * every)
		synctest.Wait()
		if n := refusals(); n != 2 || serving() != c.Leaf.SerialNumber.String() {
			t.Errorf("four ticks without the key file: %d refusals in all, serving %s; want one more refusal and %s still served", n, serving(), c.Leaf.SerialNumber)
		}
	})
}
