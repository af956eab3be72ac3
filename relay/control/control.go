// Package control owns the daemon's control socket: the way `o365relay
// queue` and `o365relay status` reach a running relay, so that the daemon,
// not the command, changes its spool, at once and as the service's own user.
//
// The socket is a Unix socket inside the spool directory (SocketPath),
// mode 0600, created by the daemon after it took the spool's lock and
// removed when it stops; the spool directory's permissions (0700, owned by
// the service user) protect it, as chasquid's and mox's control sockets
// are protected by their state directories. Whoever can reach the socket
// can read envelopes (never bodies) and retry or delete mail: the same
// power as reading the spool's files.
//
// The protocol is HTTP/1.1 with JSON bodies, with deadlines on both sides:
//
//	GET    /v1/status              status.Status
//	GET    /v1/queue               []Message, oldest first
//	GET    /v1/failed              []Message
//	GET    /v1/messages/{id}       Message (from queue/ or failed/)
//	POST   /v1/messages/{id}/retry Result
//	POST   /v1/retry               Result (every queued and failed message)
//	DELETE /v1/messages/{id}       Result
//
// Errors are {"error": "..."} with 404 for an unknown message, 400 for a
// malformed ID and 500 otherwise.
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/spool"
	"github.com/o365relay/o365relay/relay/status"
)

// SocketName is the control socket's file name inside the spool directory.
const SocketName = "control.sock"

// SocketPath is the control socket of the spool in spoolDir.
func SocketPath(spoolDir string) string { return filepath.Join(spoolDir, SocketName) }

// Daemon is what the socket serves: queue administration, whose changes
// take effect in the daemon before they return (the message is due now, or
// gone from the schedule), and the status document.
type Daemon struct {
	Admin  Admin
	Status func(ctx context.Context) status.Status
}

// Where a message is.
const (
	InQueue  = "queue"
	InFailed = "failed"
)

// Message is one message without its body.
type Message struct {
	Where    string             `json:"where"`
	Envelope *envelope.Envelope `json:"envelope"`
	State    spool.State        `json:"state"`
}

// Result answers a change.
type Result struct {
	Count int `json:"count"`
}

type errorBody struct {
	Error string `json:"error"`
}

// Server serves a Daemon on the control socket.
type Server struct {
	path string
	ln   net.Listener
	http *http.Server
	log  *zap.Logger
}

// Listen creates the socket at path, replacing a stale one: the caller
// holds the spool's lock, so no other daemon can be serving it.
func Listen(path string, d Daemon, log *zap.Logger) (*Server, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("control socket %s: removing the old one: %w", path, err)
	}
	ln, err := listenUnix(path)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	// The umask normally makes it 0600 already; be explicit.
	if err := os.Chmod(path, 0o600); err != nil {
		_ = ln.Close() // the chmod error is what matters
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	s := &Server{path: path, ln: ln, log: log}
	s.http = &http.Server{
		Handler:           s.routes(d),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       30 * time.Second,
	}
	return s, nil
}

// Path is the socket's path.
func (s *Server) Path() string { return s.path }

// Serve serves until Shutdown.
func (s *Server) Serve() error {
	if err := s.http.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops serving and removes the socket file (also when Serve was
// never called).
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.http.Shutdown(ctx)
	if cerr := s.ln.Close(); cerr != nil && !errors.Is(cerr, net.ErrClosed) && err == nil {
		err = cerr
	}
	if rerr := os.Remove(s.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) && err == nil {
		err = rerr
	}
	return err
}

func (s *Server) routes(d Daemon) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		reply(w, d.Status(ctx), nil)
	})
	mux.HandleFunc("GET /v1/queue", func(w http.ResponseWriter, r *http.Request) {
		ms, err := d.Admin.List(r.Context())
		reply(w, ms, err)
	})
	mux.HandleFunc("GET /v1/failed", func(w http.ResponseWriter, r *http.Request) {
		ms, err := d.Admin.ListFailed(r.Context())
		reply(w, ms, err)
	})
	mux.HandleFunc("GET /v1/messages/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, ok := pathID(w, r)
		if !ok {
			return
		}
		m, err := d.Admin.Get(r.Context(), id)
		reply(w, m, err)
	})
	mux.HandleFunc("POST /v1/messages/{id}/retry", func(w http.ResponseWriter, r *http.Request) {
		id, ok := pathID(w, r)
		if !ok {
			return
		}
		err := d.Admin.Retry(r.Context(), id)
		s.log.Info("control: retry", zap.String("id", string(id)), zap.Error(err))
		reply(w, Result{Count: 1}, err)
	})
	mux.HandleFunc("POST /v1/retry", func(w http.ResponseWriter, r *http.Request) {
		n, err := d.Admin.RetryAll(r.Context())
		s.log.Info("control: retry all", zap.Int("count", n), zap.Error(err))
		reply(w, Result{Count: n}, err)
	})
	mux.HandleFunc("DELETE /v1/messages/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, ok := pathID(w, r)
		if !ok {
			return
		}
		err := d.Admin.Delete(r.Context(), id)
		s.log.Info("control: delete", zap.String("id", string(id)), zap.Error(err))
		reply(w, Result{Count: 1}, err)
	})
	return mux
}

func pathID(w http.ResponseWriter, r *http.Request) (envelope.ID, bool) {
	id := envelope.ID(strings.ToUpper(r.PathValue("id")))
	if !id.Valid() {
		writeJSON(w, http.StatusBadRequest, errorBody{fmt.Sprintf("%q is not a message ID", r.PathValue("id"))})
		return "", false
	}
	return id, true
}

func reply(w http.ResponseWriter, v any, err error) {
	switch {
	case errors.Is(err, spool.ErrNotFound):
		writeJSON(w, http.StatusNotFound, errorBody{err.Error()})
	case err != nil:
		writeJSON(w, http.StatusInternalServerError, errorBody{err.Error()})
	default:
		writeJSON(w, http.StatusOK, v)
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client sees a truncated body if the write fails
}

// maxSunPath is what fits in sockaddr_un's sun_path (108 bytes on Linux,
// with its terminating NUL).
const maxSunPath = 107

// listenUnix binds a Unix socket at path. A path too long for sun_path (a
// deep spool directory) is bound through /proc/self/fd/N of its directory,
// which the kernel resolves as the directory itself.
func listenUnix(path string) (net.Listener, error) {
	var ln net.Listener
	err := viaShortPath(path, func(p string) error {
		var err error
		ln, err = net.Listen("unix", p)
		return err
	})
	return ln, err
}

// dialUnix connects to the Unix socket at path, as listenUnix binds it.
func dialUnix(ctx context.Context, path string) (net.Conn, error) {
	var c net.Conn
	err := viaShortPath(path, func(p string) error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, "unix", p)
		return err
	})
	return c, err
}

func viaShortPath(path string, f func(string) error) error {
	if len(path) <= maxSunPath {
		return f(path)
	}
	fd, err := syscall.Open(filepath.Dir(path), syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: filepath.Dir(path), Err: err}
	}
	defer syscall.Close(fd) // only needed while binding or connecting
	return f(fmt.Sprintf("/proc/self/fd/%d/%s", fd, filepath.Base(path)))
}
