package tlstest

import (
	"crypto/tls"
	"net"
	"testing"
	"time"
)

func TestServerCertVerifiesAgainstCAOnly(t *testing.T) {
	ca, err := NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.ServerCert()
	if err != nil {
		t.Fatal(err)
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_ = c.(*tls.Conn).Handshake()
			_ = c.Close()
		}
	}()
	dial := func(cfg *tls.Config) error {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", l.Addr().String(), cfg)
		if err == nil {
			err = c.Close()
		}
		return err
	}
	if err := dial(&tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"}); err != nil {
		t.Fatalf("trusted dial: %v", err)
	}
	other, _ := NewCA("other")
	if err := dial(&tls.Config{RootCAs: other.Pool(), ServerName: "localhost"}); err == nil {
		t.Fatal("certificate verified against an unrelated CA")
	}
}
