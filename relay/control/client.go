package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
	"time"

	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/spool"
	"github.com/o365relay/o365relay/relay/status"
)

// ErrNoDaemon says nothing listens on the control socket: it does not
// exist, or is left over from a daemon that is gone.
var ErrNoDaemon = errors.New("no daemon on the control socket")

// Client talks to a daemon's control socket.
type Client struct {
	path string
	http *http.Client
}

// Timeout bounds one request: a daemon answers from memory and a directory
// listing, so a minute means it is stuck.
const Timeout = time.Minute

// Dial connects to the socket at path and returns a Client, or an error
// wrapping ErrNoDaemon when nothing listens there.
func Dial(ctx context.Context, path string) (*Client, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := dialUnix(ctx, path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
			return nil, fmt.Errorf("%w (%s)", ErrNoDaemon, path)
		}
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if err := c.Close(); err != nil {
		return nil, err
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialUnix(ctx, path)
		},
		ResponseHeaderTimeout: Timeout,
		MaxIdleConns:          1,
	}
	return &Client{path: path, http: &http.Client{Transport: tr, Timeout: Timeout}}, nil
}

// Close releases the client's idle connection.
func (c *Client) Close() error {
	c.http.CloseIdleConnections()
	return nil
}

// Status returns the daemon's status document.
func (c *Client) Status(ctx context.Context) (status.Status, error) {
	var st status.Status
	err := c.do(ctx, http.MethodGet, "/v1/status", &st)
	return st, err
}

var _ Admin = (*Client)(nil)

// List lists the queued messages, oldest first.
func (c *Client) List(ctx context.Context) ([]Message, error) {
	var ms []Message
	err := c.do(ctx, http.MethodGet, "/v1/queue", &ms)
	return ms, err
}

// ListFailed lists the messages that failed for good.
func (c *Client) ListFailed(ctx context.Context) ([]Message, error) {
	var ms []Message
	err := c.do(ctx, http.MethodGet, "/v1/failed", &ms)
	return ms, err
}

// Get returns one message (spool.ErrNotFound if there is none).
func (c *Client) Get(ctx context.Context, id envelope.ID) (*Message, error) {
	var m Message
	if err := c.do(ctx, http.MethodGet, "/v1/messages/"+string(id), &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// Retry makes a message due now (a failed one goes back into the queue).
func (c *Client) Retry(ctx context.Context, id envelope.ID) error {
	return c.do(ctx, http.MethodPost, "/v1/messages/"+string(id)+"/retry", &Result{})
}

// RetryAll retries every message and returns how many.
func (c *Client) RetryAll(ctx context.Context) (int, error) {
	var r Result
	err := c.do(ctx, http.MethodPost, "/v1/retry", &r)
	return r.Count, err
}

// Delete removes a message from the queue or failed/.
func (c *Client) Delete(ctx context.Context, id envelope.ID) error {
	return c.do(ctx, http.MethodDelete, "/v1/messages/"+string(id), &Result{})
}

func (c *Client) do(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://o365relay"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("control socket %s: %w", c.path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("control socket %s: %w", c.path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e errorBody
		if json.Unmarshal(body, &e) != nil || e.Error == "" {
			e.Error = resp.Status + ": " + string(bytes.TrimSpace(body))
		}
		if resp.StatusCode == http.StatusNotFound {
			return notFound(e.Error)
		}
		return errors.New(e.Error)
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("control socket %s: the daemon's answer does not parse: %w", c.path, err)
	}
	return nil
}

// notFound is the daemon's "no such message", which errors.Is matches
// against spool.ErrNotFound.
type notFound string

func (e notFound) Error() string        { return string(e) }
func (e notFound) Is(target error) bool { return target == spool.ErrNotFound }
