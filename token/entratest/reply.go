package entratest

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
)

// entraErr is an error response in Entra's shape.
type entraErr struct {
	status int
	oauth  string
	code   int
	text   string
}

func (e *entraErr) outcome() string { return fmt.Sprintf("AADSTS%d", e.code) }

func (s *Server) writeErr(w http.ResponseWriter, e *entraErr) {
	trace, corr := newUUID(), newUUID()
	ts := s.clock().UTC().Format("2006-01-02 15:04:05Z")
	writeJSON(w, e.status, map[string]any{
		"error":             e.oauth,
		"error_description": fmt.Sprintf("AADSTS%d: %s\r\nTrace ID: %s\r\nCorrelation ID: %s\r\nTimestamp: %s", e.code, e.text, trace, corr, ts),
		"error_codes":       []int{e.code},
		"timestamp":         ts,
		"trace_id":          trace,
		"correlation_id":    corr,
		"error_uri":         fmt.Sprintf("https://login.microsoftonline.com/error?code=%d", e.code),
	})
}

func (s *Server) errTenant(t string) *entraErr {
	return &entraErr{http.StatusBadRequest, "invalid_request", 90002,
		fmt.Sprintf("Tenant '%s' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant.", t)}
}

func invalidClient(code int, text string) *entraErr {
	return &entraErr{http.StatusUnauthorized, "invalid_client", code, text}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "marshal", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store, no-cache")
	w.WriteHeader(status)
	_, _ = w.Write(b) // the client going away is not the server's problem
}

func newUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux (Go 1.24+ guarantees it)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
