package mitest

import (
	"encoding/json"
	"net/http"
)

// writeNotFound answers as each endpoint does for an identity the resource
// does not have.
func (s *Server) writeNotFound(w http.ResponseWriter) {
	if s.o.Source == AppService {
		writeJSON(w, http.StatusBadRequest, map[string]any{"statusCode": 400, "message": "Unable to load the proper Managed Identity."})
		return
	}
	s.writeErr(w, http.StatusBadRequest, "invalid_request", "Identity not found")
}

// writeErr answers in the endpoint's error shape: OAuth's for IMDS and Arc,
// App Service's own for App Service.
func (s *Server) writeErr(w http.ResponseWriter, status int, code, text string) {
	if s.o.Source == AppService {
		writeJSON(w, status, map[string]any{"statusCode": status, "message": text})
		return
	}
	writeJSON(w, status, map[string]any{"error": code, "error_description": text})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "marshal", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b) // the client going away is not the server's problem
}
