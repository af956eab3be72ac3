package smtpd

import (
	"crypto/tls"
	"strings"
	"testing"

	"github.com/o365relay/o365relay/config/tlstest"
)

// FuzzSessionSTARTTLS is FuzzSession on a listener that offers STARTTLS,
// where trackedConn frames commands itself until TLS is on: every check of
// FuzzSession holds, and once the server said "220 2.0.0 Ready to start
// TLS" it says nothing more in clear — whatever the fuzzed client sent
// after STARTTLS is never answered, let alone acted on (RFC 3207 §4.2).
// (The bytes after STARTTLS are not a ClientHello, so the handshake fails
// and the connection ends.)
func FuzzSessionSTARTTLS(f *testing.F) {
	for _, s := range fuzzSessionSeeds {
		f.Add([]byte(s))
	}
	f.Add([]byte("EHLO app\r\nSTARTTLS\r\nMAIL FROM:<app@contoso.com>\r\nRCPT TO:<a@example.org>\r\nDATA\r\nx\r\n.\r\n"))
	f.Add([]byte("EHLO app\r\nMAIL FROM:<app@contoso.com>\r\nRCPT TO:<a@example.org>\r\nBDAT 10 LAST\r\nSTARTTLS\r\nNOOP\r\n"))
	f.Add([]byte("EHLO app\r\nSTARTTLS x\r\nstarttls\r\n"))
	ca, err := tlstest.NewCA("fuzz CA")
	if err != nil {
		f.Fatal(err)
	}
	cert, err := ca.ServerCert("relay.fuzz")
	if err != nil {
		f.Fatal(err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	fs := startFuzzServer(f, RejectBareLineEndings, func(o *Options) {
		o.TLSConfig = func() *tls.Config { return cfg }
	})
	f.Fuzz(func(t *testing.T, in []byte) {
		lines := fuzzSessionOnce(t, fs, in)
		for i, l := range lines {
			if strings.HasPrefix(l, "220 2.0.0 Ready to start TLS") && i != len(lines)-1 {
				t.Fatalf("said %q after the 220 to STARTTLS", lines[i+1:])
			}
		}
	})
}
