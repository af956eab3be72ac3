// Package entratest owns a strict fake of Microsoft Entra ID's v2.0 token
// service for the client-credentials grant: tenants, app registrations with
// their certificate, secret and federated credentials, the OpenID
// configuration MSAL resolves, and the access tokens Exchange Online accepts.
//
// It is used by tests and by the `o365relay demo` command, so nothing here
// imports "testing". It is strict on purpose: every check Entra ID documents
// for the flow (docs/entra.md, docs/azure.md#aadsts-codes) is made, and failures come back in
// Entra's JSON error shape (docs/entra.md#error-responses) with the AADSTS code a real tenant would
// give, so the relay's error explanations are exercised for real.
//
// Access tokens are RS256 JWTs signed with the server's own key (PublicKey),
// carrying the claims Exchange Online looks at: aud
// "https://outlook.office365.com", iss "https://sts.windows.net/<tenant>/",
// tid, appid, oid, roles, iat, nbf, exp (plus uti, a unique token id, as Entra
// sends, so two tokens issued in the same second still differ).
package entratest

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/o365relay/o365relay/config/tlstest"
)

// Scope is the only resource the fake issues tokens for (docs/entra.md#the-token-request:
// SMTP needs exactly this scope).
const Scope = "https://outlook.office365.com/.default"

// Audience is the aud claim of issued access tokens.
const Audience = "https://outlook.office365.com"

// DefaultFederatedAudience is the audience Entra expects in a Kubernetes
// workload-identity token (docs/entra.md#workload-identity).
const DefaultFederatedAudience = "api://AzureADTokenExchange"

// OutageDrop passed to SetOutage makes the server close every connection
// without an HTTP response, as a network failure would.
const OutageDrop = -1

// Options configure a Server.
type Options struct {
	// Tenant is the directory (tenant) ID or domain served; also the tid
	// claim. Default "00000000-0000-0000-0000-0000000000aa".
	Tenant string
	// Clock gives the server's notion of now. Default time.Now.
	Clock func() time.Time
	// CA signs the server's TLS certificate. Nil: the server makes its own,
	// available from CA().
	CA *tlstest.CA
	// Skew is the clock skew tolerated on assertion nbf/exp. Default 5 min.
	Skew time.Duration
}

// App is an app registration together with its enterprise application.
type App struct {
	ClientID string
	// ObjectID is the enterprise application's (service principal's) object
	// ID, the oid claim.
	ObjectID string
	// Certs are the certificates uploaded under "Certificates & secrets".
	Certs []*x509.Certificate
	// Secret is a client secret value; empty means none.
	Secret string
	// Federated are federated identity credentials.
	Federated []Federated
	// Roles are the granted application permissions, e.g.
	// {"SMTP.SendAsApp"}; nil means admin consent was not granted and the
	// token has no roles claim.
	Roles []string
}

// Federated is a federated identity credential (workload identity).
type Federated struct {
	Issuer   string
	Subject  string
	Audience string // default DefaultFederatedAudience
	// Keys verify the external token's signature (the cluster's OIDC
	// signing keys); *rsa.PublicKey only, as AKS issues RS256.
	Keys []crypto.PublicKey
}

// Request is one logged request, without any secret.
type Request struct {
	Method   string
	Path     string
	ClientID string
	// Outcome is "ok", "outage", or "AADSTS<code>".
	Outcome string
}

// Server is the fake Entra ID.
type Server struct {
	tenant string
	clock  func() time.Time
	skew   time.Duration
	ca     *tlstest.CA
	key    *rsa.PrivateKey
	kid    string

	ln   net.Listener
	srv  *http.Server
	done chan struct{}
	url  string

	mu        sync.Mutex
	apps      map[string]*App
	jtis      map[string]time.Time // seen jti → when it may be forgotten
	lifetime  time.Duration
	refreshIn time.Duration
	outage    int
	answer    func(map[string]any) []byte // SetTokenAnswer
	requests  []Request
	tokenReqs int
	changed   chan struct{} // closed and replaced on every token request
}

// NewServer starts the fake on 127.0.0.1 with a random port.
func NewServer(opts Options) (*Server, error) {
	s := &Server{
		tenant:   opts.Tenant,
		clock:    opts.Clock,
		skew:     opts.Skew,
		ca:       opts.CA,
		apps:     map[string]*App{},
		jtis:     map[string]time.Time{},
		lifetime: 3599 * time.Second,
		done:     make(chan struct{}),
		changed:  make(chan struct{}),
	}
	if s.tenant == "" {
		s.tenant = "00000000-0000-0000-0000-0000000000aa"
	}
	if s.clock == nil {
		s.clock = time.Now
	}
	if s.skew == 0 {
		s.skew = 5 * time.Minute
	}
	var err error
	if s.ca == nil {
		if s.ca, err = tlstest.NewCA("entratest CA"); err != nil {
			return nil, fmt.Errorf("entratest: %w", err)
		}
	}
	if s.key, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		return nil, fmt.Errorf("entratest: %w", err)
	}
	sum := sha256.Sum256(x509.MarshalPKCS1PublicKey(&s.key.PublicKey))
	s.kid = base64.RawURLEncoding.EncodeToString(sum[:16])
	cert, err := s.ca.ServerCert()
	if err != nil {
		return nil, fmt.Errorf("entratest: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("entratest: %w", err)
	}
	s.ln = ln
	s.url = "https://" + ln.Addr().String() + "/"
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{tenant}/v2.0/.well-known/openid-configuration", s.openIDConfig)
	mux.HandleFunc("GET /common/discovery/instance", s.instanceDiscovery)
	mux.HandleFunc("POST /{tenant}/oauth2/v2.0/token", s.token)
	mux.HandleFunc("/", s.notFound)
	s.srv = &http.Server{
		Handler:           s.outageMiddleware(mux),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
		// TLS handshake failures from clients that do not trust the CA
		// are expected in tests; keep them off stderr.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	go func() {
		defer close(s.done)
		_ = s.srv.ServeTLS(ln, "", "") // returns http.ErrServerClosed on Close
	}()
	return s, nil
}

// URL is the authority host, "https://127.0.0.1:PORT/".
func (s *Server) URL() string { return s.url }

// Tenant is the tenant served.
func (s *Server) Tenant() string { return s.tenant }

// TokenEndpoint is the v2 token endpoint, the aud of client assertions.
func (s *Server) TokenEndpoint() string {
	return strings.TrimSuffix(s.url, "/") + "/" + s.tenant + "/oauth2/v2.0/token"
}

// CA is the authority that signed the server's TLS certificate.
func (s *Server) CA() *tlstest.CA { return s.ca }

// PublicKey verifies the access tokens the server issues.
func (s *Server) PublicKey() *rsa.PublicKey { return &s.key.PublicKey }

// KeyID is the kid header of issued access tokens.
func (s *Server) KeyID() string { return s.kid }

// Close stops the server and waits for it.
func (s *Server) Close() error {
	err := s.srv.Close()
	<-s.done
	return err
}
