package mitest

import (
	"net/http"
	"time"
)

// SetOutage makes every request fail with status (e.g. 503, or 429 as IMDS
// throttles), or drop the connection with OutageDrop; 0 ends it.
func (s *Server) SetOutage(status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.outage = status
}

// SetLifetime changes the lifetime of the tokens issued from now on.
func (s *Server) SetLifetime(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.o.Lifetime = d
}

func (s *Server) outageMiddleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		outage := s.outage
		s.mu.Unlock()
		if outage == 0 {
			next.ServeHTTP(w, r)
			return
		}
		s.log(r, "", "outage")
		if outage == OutageDrop {
			if hj, ok := w.(http.Hijacker); ok {
				if c, _, err := hj.Hijack(); err == nil {
					_ = c.Close() // a dropped connection is the point
					return
				}
			}
			panic(http.ErrAbortHandler)
		}
		s.writeErr(w, outage, "temporarily_unavailable", "The managed identity endpoint is temporarily unavailable.")
	})
}
