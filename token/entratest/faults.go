package entratest

import (
	"net/http"
	"strings"
	"time"
)

// SetLifetime sets expires_in of issued tokens (default 3599 s).
func (s *Server) SetLifetime(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lifetime = d
}

// SetRefreshIn makes responses carry refresh_in (0 = omit).
func (s *Server) SetRefreshIn(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refreshIn = d
}

// SetOutage makes every request fail with the given HTTP status (e.g. 503),
// or drop the connection with OutageDrop; 0 ends the outage.
func (s *Server) SetOutage(status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.outage = status
}

func (s *Server) outageMiddleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		outage := s.outage
		isToken := r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/oauth2/v2.0/token")
		if outage != 0 && isToken {
			s.countTokenLocked()
		}
		s.mu.Unlock()
		if outage == 0 {
			next.ServeHTTP(w, r)
			return
		}
		s.log(r, r.PostFormValue("client_id"), "outage")
		if outage == OutageDrop {
			if hj, ok := w.(http.Hijacker); ok {
				if c, _, err := hj.Hijack(); err == nil {
					_ = c.Close() // a dropped connection is the point
					return
				}
			}
			// HTTP/2 cannot hijack: abort the stream instead.
			panic(http.ErrAbortHandler)
		}
		writeJSON(w, outage, map[string]any{
			"error":             "temporarily_unavailable",
			"error_description": "AADSTS90033: A transient error has occurred. Please try again.\r\nTrace ID: " + newUUID() + "\r\nCorrelation ID: " + newUUID() + "\r\nTimestamp: " + time.Now().UTC().Format("2006-01-02 15:04:05Z"),
			"error_codes":       []int{90033},
		})
	})
}

// SetTokenAnswer makes the token endpoint answer a good request with what
// f makes of the JSON object it would have sent (nil restores the real
// answer): a hostile or broken token service, for the client's limits.
func (s *Server) SetTokenAnswer(f func(resp map[string]any) []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.answer = f
}
