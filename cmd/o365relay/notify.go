package main

import (
	"context"
	"net"
	"os"
	"time"
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

// statusEvery is how often the STATUS= line is recomputed; it is sent only
// when it changed (it carries times, not ages, so a steady relay sends
// nothing).
const statusEvery = 5 * time.Second

// notifyStatus keeps systemd's STATUS= (what `systemctl status` shows) equal
// to line() until ctx is done, once ready is closed. Without NOTIFY_SOCKET
// it returns at once.
func notifyStatus(ctx context.Context, ready <-chan struct{}, line func(context.Context) string) {
	if os.Getenv("NOTIFY_SOCKET") == "" {
		return
	}
	select {
	case <-ready:
	case <-ctx.Done():
		return
	}
	t := time.NewTicker(statusEvery)
	defer t.Stop()
	last := ""
	for {
		if l := line(ctx); l != last && sdNotify("STATUS="+l) == nil {
			last = l
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
