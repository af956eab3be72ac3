// Package mitest owns a strict fake of the platform endpoints that hand a
// managed identity its access token: the Azure Instance Metadata Service
// (IMDS) of an Azure VM, the App Service identity endpoint (also used by
// Container Apps and Functions) and the Azure Arc agent's endpoint with its
// challenge-file handshake. One Server imitates one of them.
//
// The tokens are issued by a token/entratest Server (Entra ID issues them
// for the real endpoints too), so the fake Exchange Online verifies them
// exactly as it verifies an app registration's: aud, tid, appid (the
// identity's client ID), oid, roles, plus xms_mirid and idtyp=app as a
// managed identity's token carries them.
//
// Strict: the method, the api-version of the source, the required headers
// (Metadata: true for IMDS and Arc, X-IDENTITY-HEADER for App Service, no
// X-Forwarded-For for IMDS), the resource, the identity selector's
// parameter name for the source (client_id, object_id, msi_res_id for IMDS
// and Arc; client_id, object_id, mi_res_id for App Service), and no other
// parameter. Each failure is answered in the shape the real endpoint uses.
//
// Nothing here imports "testing" or listens beyond 127.0.0.1. Client()
// returns an HTTP client that reaches IMDS's link-local address only by
// mapping it to this server, and refuses (and records) any dial to an
// address that is not loopback.
package mitest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/o365relay/o365relay/token/entratest"
)

// Source is the platform a Server imitates.
type Source string

const (
	IMDS       Source = "imds"
	AppService Source = "appservice"
	Arc        Source = "arc"
)

// API versions MSAL Go v1.10.1 sends, which the real endpoints require.
const (
	IMDSAPIVersion       = "2018-02-01"
	AppServiceAPIVersion = "2019-08-01"
	ArcAPIVersion        = "2020-06-01"
)

// IMDSAddr is the link-local address of IMDS, which Client maps to the
// server; nothing ever dials it.
const IMDSAddr = "169.254.169.254:80"

// ArcTokenDir is where MSAL requires the Arc agent's challenge file to be
// on Linux (managedidentity.go linuxTokenPath). The server writes its
// files into Options.ArcDir and names them under ArcTokenDir in the
// challenge; the test makes ArcDir appear at ArcTokenDir for the client
// (a private mount namespace, see the Arc tests).
const ArcTokenDir = "/var/opt/azcmagent/tokens"

// SourceEnv are the variables MSAL reads to pick a source
// (managedidentity.GetSource): a test clears them all before setting
// Env's.
var SourceEnv = []string{"IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT"}

// OutageDrop passed to SetOutage closes every connection without a
// response.
const OutageDrop = -1

// Identity is one managed identity of the imitated resource.
type Identity struct {
	ClientID   string
	ObjectID   string // of its service principal: the oid claim
	ResourceID string // /subscriptions/…: the xms_mirid claim
	// Roles assigned to its service principal (SMTP.SendAsApp); nil: none.
	Roles []string
}

// Options configure a Server.
type Options struct {
	Source Source
	// Entra issues the tokens. Required.
	Entra *entratest.Server
	// SystemAssigned is the resource's system-assigned identity; nil: off.
	SystemAssigned *Identity
	// UserAssigned are the identities attached to the resource.
	UserAssigned []Identity
	// Lifetime of issued tokens; default 24 h, as IMDS issues them.
	Lifetime time.Duration
	// ArcDir receives the challenge files (Source Arc): the directory the
	// client sees as ArcTokenDir. Required for Arc.
	ArcDir string
}

// Request is one logged request, without any secret.
type Request struct {
	Path     string
	Query    url.Values
	Identity string // client ID of the identity it was for, if found
	// Outcome is "ok", "challenge", "outage" or the reason for a refusal.
	Outcome string
}

// Server is the fake endpoint.
type Server struct {
	o      Options
	header string // App Service's IDENTITY_HEADER
	ln     net.Listener
	srv    *http.Server
	done   chan struct{}

	mu         sync.Mutex
	outage     int
	requests   []Request
	issued     int
	keys       map[string]string // Arc: secret → file path, until used
	violations []string
	changed    chan struct{}
}

// NewServer starts the fake on 127.0.0.1 with a random port (plain HTTP,
// like every real managed-identity endpoint but Service Fabric's).
func NewServer(o Options) (*Server, error) {
	switch {
	case o.Entra == nil:
		return nil, errors.New("mitest: Options.Entra is required")
	case o.Source != IMDS && o.Source != AppService && o.Source != Arc:
		return nil, fmt.Errorf("mitest: unknown source %q", o.Source)
	case o.Source == Arc && o.ArcDir == "":
		return nil, errors.New("mitest: Options.ArcDir is required for Arc")
	}
	if o.Lifetime <= 0 {
		o.Lifetime = 24 * time.Hour
	}
	s := &Server{o: o, header: randomHex(16), done: make(chan struct{}), keys: map[string]string{}, changed: make(chan struct{})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("mitest: %w", err)
	}
	s.ln = ln
	mux := http.NewServeMux()
	switch o.Source {
	case IMDS, Arc:
		mux.HandleFunc("/metadata/identity/oauth2/token", s.token)
	case AppService:
		mux.HandleFunc("/msi/token", s.token)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.log(r, "", "404")
		s.violation("request to an unknown path %s", r.URL.Path)
		http.NotFound(w, r)
	})
	s.srv = &http.Server{
		Handler:           s.outageMiddleware(mux),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(ln) // http.ErrServerClosed on Close
	}()
	return s, nil
}

// Addr is the listener's address, 127.0.0.1:PORT.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Header is App Service's IDENTITY_HEADER value (a secret).
func (s *Server) Header() string { return s.header }

// Env is the environment that makes MSAL choose this source and reach this
// server; for IMDS it is empty (IMDS is the default, reached through
// Client). Clear SourceEnv first.
func (s *Server) Env() []string {
	base := "http://" + s.Addr()
	switch s.o.Source {
	case AppService:
		return []string{"IDENTITY_ENDPOINT=" + base + "/msi/token", "IDENTITY_HEADER=" + s.header}
	case Arc:
		return []string{"IDENTITY_ENDPOINT=" + base + "/metadata/identity/oauth2/token", "IMDS_ENDPOINT=" + base}
	}
	return nil
}

// Close stops the server and removes the challenge files it left.
func (s *Server) Close() error {
	err := s.srv.Close()
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.keys {
		if rerr := os.Remove(p); rerr != nil && !errors.Is(rerr, os.ErrNotExist) && err == nil {
			err = rerr
		}
	}
	return err
}

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

// Issued counts the tokens issued.
func (s *Server) Issued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.issued
}

// Requests returns the request log.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// Violations are the protocol errors a client made (wrong api-version,
// missing header, unknown parameter, a dial that was not to loopback):
// a test fails if there are any.
func (s *Server) Violations() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.violations...)
}

// WaitRequests blocks until at least n requests were logged or ctx is done.
func (s *Server) WaitRequests(ctx context.Context, n int) error {
	for {
		s.mu.Lock()
		got, ch := len(s.requests), s.changed
		s.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("mitest: %d requests, waited for %d: %w", got, n, ctx.Err())
		}
	}
}

func (s *Server) violation(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.violations = append(s.violations, fmt.Sprintf(format, args...))
}

func (s *Server) log(r *http.Request, identity, outcome string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = append(s.requests, Request{Path: r.URL.Path, Query: r.URL.Query(), Identity: identity, Outcome: outcome})
	close(s.changed)
	s.changed = make(chan struct{})
}

// Client is an HTTP client for the relay under test: a dial to IMDSAddr
// reaches this server (for Source IMDS), a dial to a loopback address goes
// through, and any other dial is refused and recorded as a violation, so no
// test can reach the real 169.254.169.254 or anything beyond this machine.
func (s *Server) Client() *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second}
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			Proxy: nil,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				if addr == IMDSAddr && s.o.Source == IMDS {
					return d.DialContext(ctx, "tcp", s.Addr())
				}
				host, _, err := net.SplitHostPort(addr)
				if ip := net.ParseIP(host); err == nil && ip != nil && ip.IsLoopback() {
					return d.DialContext(ctx, network, addr)
				}
				s.violation("dial to %s refused: only loopback (and IMDS mapped to the fake) may be reached", addr)
				return nil, fmt.Errorf("mitest: dial to %s refused (not loopback)", addr)
			},
		},
	}
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

// selectors are the identity parameters each source understands.
func (s *Server) selectors() []string {
	if s.o.Source == AppService {
		return []string{"client_id", "object_id", "mi_res_id"}
	}
	return []string{"client_id", "object_id", "msi_res_id"}
}

func (s *Server) apiVersion() string {
	switch s.o.Source {
	case AppService:
		return AppServiceAPIVersion
	case Arc:
		return ArcAPIVersion
	}
	return IMDSAPIVersion
}

// token is the token endpoint: it checks the request as the source does,
// runs Arc's handshake, finds the identity and has Entra issue its token.
func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	selector, value, ok := s.checkRequest(w, r, q)
	if !ok {
		return
	}
	if s.o.Source == Arc && !s.arcAuthorized(w, r) {
		return
	}
	id := s.find(selector, value)
	if id == nil {
		s.log(r, "", "identity not found")
		s.writeNotFound(w)
		return
	}
	s.issue(w, r, id, selector, q.Get("resource"))
}

// refuse logs and answers a request the endpoint turns down.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, status int, code, text string) {
	s.log(r, "", text)
	s.writeErr(w, status, code, text)
}

// checkRequest is token's strictness, split out to keep token short: the
// method, api-version, headers and query parameters the source requires.
// It returns the identity selector given (if any) and its value; when ok is
// false it has answered the request itself.
func (s *Server) checkRequest(w http.ResponseWriter, r *http.Request, q url.Values) (selector, value string, ok bool) {
	if r.Method != http.MethodGet {
		s.violation("%s instead of GET", r.Method)
		s.refuse(w, r, http.StatusMethodNotAllowed, "invalid_request", "Only GET is allowed.")
		return "", "", false
	}
	if v := q.Get("api-version"); v != s.apiVersion() {
		s.violation("api-version %q, want %s", v, s.apiVersion())
		s.refuse(w, r, http.StatusBadRequest, "invalid_request", "Invalid or missing api-version: "+v)
		return "", "", false
	}
	if msg := s.checkHeaders(r); msg != "" {
		s.violation("%s", msg)
		s.refuse(w, r, http.StatusBadRequest, "invalid_request", msg)
		return "", "", false
	}
	allowed := map[string]bool{"api-version": true, "resource": true}
	for _, k := range s.selectors() {
		allowed[k] = true
		if v := q.Get(k); v != "" {
			if selector != "" {
				s.violation("two identity selectors, %s and %s", selector, k)
				s.refuse(w, r, http.StatusBadRequest, "invalid_request", "Only one of client_id, object_id and the resource ID may be given.")
				return "", "", false
			}
			selector, value = k, v
		}
	}
	for k := range q {
		if !allowed[k] {
			s.violation("unexpected query parameter %q for %s", k, s.o.Source)
			s.refuse(w, r, http.StatusBadRequest, "invalid_request", "Unexpected parameter: "+k)
			return "", "", false
		}
	}
	if q.Get("resource") == "" {
		s.violation("no resource")
		s.refuse(w, r, http.StatusBadRequest, "invalid_request", "Required query variable 'resource' is missing")
		return "", "", false
	}
	return selector, value, true
}

// issue is token's answer for a found identity, split out to keep token
// short: Entra signs the token, and the body has the source's fields.
func (s *Server) issue(w http.ResponseWriter, r *http.Request, id *Identity, selector, resource string) {
	s.mu.Lock()
	lifetime := s.o.Lifetime
	s.mu.Unlock()
	tok, issued, exp, err := s.o.Entra.Issue(entratest.Principal{
		AppID: id.ClientID, ObjectID: id.ObjectID, Roles: id.Roles,
		Extra: map[string]any{"xms_mirid": id.ResourceID},
	}, resource, lifetime)
	if err != nil {
		s.refuse(w, r, http.StatusBadRequest, "invalid_resource", err.Error())
		return
	}
	s.mu.Lock()
	s.issued++
	s.mu.Unlock()
	s.log(r, id.ClientID, "ok")
	secs := strconv.FormatInt(int64(exp.Sub(issued)/time.Second), 10)
	body := map[string]any{
		"access_token": tok,
		"client_id":    id.ClientID,
		"expires_on":   strconv.FormatInt(exp.Unix(), 10),
		"resource":     resource,
		"token_type":   "Bearer",
	}
	if s.o.Source != AppService {
		body["expires_in"], body["ext_expires_in"] = secs, secs
		body["not_before"] = strconv.FormatInt(issued.Unix(), 10)
	}
	switch selector { // Arc echoes the identity it used; so does IMDS
	case "msi_res_id":
		body["msi_res_id"] = id.ResourceID
	case "object_id":
		body["object_id"] = id.ObjectID
	}
	writeJSON(w, http.StatusOK, body)
}

func (s *Server) checkHeaders(r *http.Request) string {
	switch s.o.Source {
	case IMDS:
		if r.Header.Get("X-Forwarded-For") != "" {
			return "IMDS refuses proxied requests (X-Forwarded-For)"
		}
		fallthrough
	case Arc:
		if r.Header.Get("Metadata") != "true" {
			return "Required metadata header not specified"
		}
	case AppService:
		if r.Header.Get("X-IDENTITY-HEADER") != s.header {
			return "X-IDENTITY-HEADER missing or wrong"
		}
	}
	return ""
}

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

func (s *Server) find(selector, value string) *Identity {
	if selector == "" {
		return s.o.SystemAssigned
	}
	for i := range s.o.UserAssigned {
		id := &s.o.UserAssigned[i]
		switch selector {
		case "client_id":
			if strings.EqualFold(id.ClientID, value) {
				return id
			}
		case "object_id":
			if strings.EqualFold(id.ObjectID, value) {
				return id
			}
		default:
			if strings.EqualFold(id.ResourceID, value) {
				return id
			}
		}
	}
	return nil
}

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

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux (Go 1.24+ guarantees it)
	}
	return hex.EncodeToString(b)
}

// TB is the part of testing.TB that Start and SetEnv use (this package
// does not import testing: the demo may use it too).
type TB interface {
	Helper()
	Cleanup(func())
	Error(args ...any)
	Errorf(format string, args ...any)
	Fatal(args ...any)
	Setenv(key, value string)
}

// Start starts a server for a test and, at its end, fails the test for
// every violation the server saw and closes it.
func Start(t TB, o Options) *Server {
	t.Helper()
	s, err := NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if v := s.Violations(); len(v) > 0 {
			t.Errorf("managed identity endpoint saw violations: %q", v)
		}
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// SetEnv makes MSAL in this process pick the server's source: it clears
// every variable of SourceEnv and sets Env's (for the rest of the test, so
// the test cannot run in parallel).
func (s *Server) SetEnv(t TB) {
	t.Helper()
	for _, k := range SourceEnv {
		t.Setenv(k, "")
	}
	for _, kv := range s.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
}
