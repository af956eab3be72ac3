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
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
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

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux (Go 1.24+ guarantees it)
	}
	return hex.EncodeToString(b)
}
