package mitest

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
)

// arcAuthorized runs the Arc handshake: a request without Authorization
// gets 401 and a fresh challenge file; one with "Basic <file content>" of
// a live challenge passes, once. It answers the request itself when it
// returns false.
func (s *Server) arcAuthorized(w http.ResponseWriter, r *http.Request) bool {
	auth := r.Header.Get("Authorization")
	if auth == "" {
		name := randomHex(8) + ".key"
		secret := randomHex(32)
		local := filepath.Join(s.o.ArcDir, name)
		if err := os.WriteFile(local, []byte(secret), 0o600); err != nil {
			s.log(r, "", "challenge file: "+err.Error())
			s.writeErr(w, http.StatusInternalServerError, "server_error", "cannot write the challenge file")
			return false
		}
		s.mu.Lock()
		s.keys[secret] = local
		s.mu.Unlock()
		s.log(r, "", "challenge")
		w.Header().Set("WWW-Authenticate", "Basic realm="+ArcTokenDir+"/"+name)
		w.WriteHeader(http.StatusUnauthorized)
		return false
	}
	secret, ok := strings.CutPrefix(auth, "Basic ")
	s.mu.Lock()
	local, known := s.keys[secret]
	delete(s.keys, secret)
	s.mu.Unlock()
	if !ok || !known {
		s.violation("Arc request with an Authorization that is not a live challenge's file content")
		s.log(r, "", "bad challenge answer")
		s.writeErr(w, http.StatusUnauthorized, "invalid_request", "Invalid Authorization header")
		return false
	}
	if err := os.Remove(local); err != nil {
		s.violation("removing %s: %v", local, err)
	}
	return true
}
