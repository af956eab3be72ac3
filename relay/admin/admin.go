// Package admin owns the relay's operator-facing HTTP endpoint: Prometheus
// metrics at /metrics, liveness at /healthz, readiness at /readyz and the
// structured status (relay/status) at /status.
//
// It listens on loopback by default (the metrics name mailboxes) and is off
// when its address is empty. Readiness is decided by checks and the status
// document built by the daemon, so this package knows nothing about spools
// or tokens.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// Check reports nil when its part of the relay is ready. It must return
// quickly (it runs on every probe) and its error text is shown to whoever can
// reach the admin port, so it must not contain secrets.
type Check func(ctx context.Context) error

// Options configure the admin server.
type Options struct {
	Addr       string
	Collectors []prometheus.Collector
	Ready      map[string]Check
	// Status, if set, is served as JSON at /status. Like a Check's error,
	// what it returns is shown to whoever reaches the port: no secrets.
	Status func(ctx context.Context) any
	Logger *zap.Logger
}

// Server is the admin HTTP server.
type Server struct {
	opts Options
	reg  *prometheus.Registry
	http *http.Server
	ln   net.Listener
}

// New builds the server and registers the collectors in its own registry
// (never the global one: two relays in one test process must not collide).
func New(opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, c := range opts.Collectors {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("admin: registering metrics: %w", err)
		}
	}
	s := &Server{opts: opts, reg: reg}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	if opts.Status != nil {
		mux.HandleFunc("GET /status", s.status)
	}
	s.http = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
	}
	return s, nil
}

// Registry returns the registry the server exposes (tests read it).
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// Listen binds the address.
func (s *Server) Listen() error {
	ln, err := net.Listen("tcp", s.opts.Addr)
	if err != nil {
		return fmt.Errorf("admin listen on %s: %w", s.opts.Addr, err)
	}
	s.ln = ln
	return nil
}

// Addr is the bound address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve serves until Shutdown.
func (s *Server) Serve() error {
	if err := s.http.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops the server.
func (s *Server) Shutdown(ctx context.Context) error { return s.http.Shutdown(ctx) }

// readyz answers 200 when every check passes, 503 otherwise, with a JSON body
// naming each check's state so an operator sees why.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	names := make([]string, 0, len(s.opts.Ready))
	for n := range s.opts.Ready {
		names = append(names, n)
	}
	sort.Strings(names)
	type result struct {
		Name  string `json:"name"`
		OK    bool   `json:"ok"`
		Error string `json:"error,omitempty"`
	}
	out := struct {
		Ready  bool     `json:"ready"`
		Checks []result `json:"checks"`
	}{Ready: true}
	for _, n := range names {
		err := s.opts.Ready[n](ctx)
		res := result{Name: n, OK: err == nil}
		if err != nil {
			res.Error = err.Error()
			out.Ready = false
		}
		out.Checks = append(out.Checks, res)
	}
	w.Header().Set("Content-Type", "application/json")
	if !out.Ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(out)
}

// status serves the daemon's status document.
func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(s.opts.Status(ctx))
}

// Probe asks a running relay's /readyz; it is what `o365relay healthcheck`
// runs in images without a shell or curl.
func Probe(ctx context.Context, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("admin address %q: %w", addr, err)
	}
	// A wildcard listen address is reachable on loopback.
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(host, port)+"/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body struct {
		Checks []struct {
			Name  string `json:"name"`
			OK    bool   `json:"ok"`
			Error string `json:"error"`
		} `json:"checks"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	if resp.StatusCode != http.StatusOK {
		msg := resp.Status
		for _, c := range body.Checks {
			if !c.OK {
				msg += "; " + c.Name + ": " + c.Error
			}
		}
		return errors.New("not ready: " + msg)
	}
	return nil
}
