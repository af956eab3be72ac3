package main

import (
	"net"
	"os"
)

// sdNotify sends a state line to systemd when the unit is Type=notify
// ($NOTIFY_SOCKET set), per sd_notify(3): one datagram on a unix socket, an
// '@' prefix meaning the abstract namespace. Without the variable it does
// nothing, so the same binary runs under Docker, Kubernetes or a terminal.
func sdNotify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	_, werr := c.Write([]byte(state))
	if cerr := c.Close(); werr == nil {
		werr = cerr
	}
	return werr
}
