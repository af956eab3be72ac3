package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// checkLoopback accepts host:port only when every address the host stands
// for is loopback (127.0.0.0/8, ::1): a load generator must never be pointed
// at someone else's server by a typo.
func checkLoopback(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if p, err := net.LookupPort("tcp", port); err != nil || p == 0 {
		return fmt.Errorf("%q: bad port", addr)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if !ip.Unmap().IsLoopback() {
			return fmt.Errorf("%s is not a loopback address; this tool only targets 127.0.0.0/8 or ::1", host)
		}
		return nil
	}
	if host != "localhost" {
		// Names other than localhost are not resolved at all, so no DNS
		// answer can redirect the load.
		return fmt.Errorf("%q: give a loopback IP address (or localhost)", host)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return err
	}
	for _, ip := range ips {
		if !ip.Unmap().IsLoopback() {
			return fmt.Errorf("localhost resolves to %s, which is not loopback", ip)
		}
	}
	return nil
}
