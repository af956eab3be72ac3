package mitest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"
)

// Client is an HTTP client for the relay under test: a dial to IMDSAddr
// reaches this server (for Source IMDS), a dial to a loopback address goes
// through, and any other dial is refused and recorded as a violation, so no
// test can reach the real 169.254.169.254 or anything beyond this machine.
func (s *Server) Client() *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second}
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			Proxy: nil,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				if addr == IMDSAddr && s.o.Source == IMDS {
					return d.DialContext(ctx, "tcp", s.Addr())
				}
				host, _, err := net.SplitHostPort(addr)
				if ip := net.ParseIP(host); err == nil && ip != nil && ip.IsLoopback() {
					return d.DialContext(ctx, network, addr)
				}
				s.violation("dial to %s refused: only loopback (and IMDS mapped to the fake) may be reached", addr)
				return nil, fmt.Errorf("mitest: dial to %s refused (not loopback)", addr)
			},
		},
	}
}
