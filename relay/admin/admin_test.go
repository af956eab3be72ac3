package admin

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestReadyzAndMetrics(t *testing.T) {
	t.Parallel()
	var tokenOK atomic.Bool
	ctr := prometheus.NewCounter(prometheus.CounterOpts{Name: "o365relay_test_total", Help: "test"})
	s, err := New(Options{
		Addr:       "127.0.0.1:0",
		Collectors: []prometheus.Collector{ctr},
		Ready: map[string]Check{
			"token": func(context.Context) error {
				if tokenOK.Load() {
					return nil
				}
				return errors.New("no token obtained from Entra ID yet")
			},
			"spool": func(context.Context) error { return nil },
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	t.Cleanup(func() {
		if err := s.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	addr := s.Addr().String()
	if err := Probe(context.Background(), addr); err == nil || !strings.Contains(err.Error(), "token: no token") {
		t.Fatalf("probe before token: %v", err)
	}
	tokenOK.Store(true)
	if err := Probe(context.Background(), addr); err != nil {
		t.Fatalf("probe after token: %v", err)
	}
	ctr.Add(3)
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "o365relay_test_total 3") {
		t.Fatalf("metric missing:\n%s", b)
	}
	resp, err = http.Get("http://" + addr + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", resp, err)
	}
	resp.Body.Close()
}
