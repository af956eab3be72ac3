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
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"

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

// AddApp registers an app (replacing one with the same client ID).
func (s *Server) AddApp(a App) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := a
	c.Certs = append([]*x509.Certificate(nil), a.Certs...)
	c.Federated = append([]Federated(nil), a.Federated...)
	s.apps[a.ClientID] = &c
}

// RegisterCert uploads another certificate to an app.
func (s *Server) RegisterCert(clientID string, cert *x509.Certificate) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.apps[clientID]
	if !ok {
		return fmt.Errorf("entratest: no app %q", clientID)
	}
	a.Certs = append(a.Certs, cert)
	return nil
}

// RemoveCert deletes a certificate from an app.
func (s *Server) RemoveCert(clientID string, cert *x509.Certificate) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.apps[clientID]
	if !ok {
		return fmt.Errorf("entratest: no app %q", clientID)
	}
	kept := a.Certs[:0:0]
	for _, c := range a.Certs {
		if !c.Equal(cert) {
			kept = append(kept, c)
		}
	}
	a.Certs = kept
	return nil
}

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

// TokenRequests counts POSTs to the token endpoint, whatever their outcome.
func (s *Server) TokenRequests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokenReqs
}

// WaitTokenRequests blocks until at least n token requests were received or
// ctx is done. Tests use it instead of sleeping.
func (s *Server) WaitTokenRequests(ctx context.Context, n int) error {
	for {
		s.mu.Lock()
		got, ch := s.tokenReqs, s.changed
		s.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("entratest: %d token requests, waited for %d: %w", got, n, ctx.Err())
		}
	}
}

// Requests returns the request log.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

func (s *Server) log(r *http.Request, clientID, outcome string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = append(s.requests, Request{Method: r.Method, Path: r.URL.Path, ClientID: clientID, Outcome: outcome})
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

func (s *Server) countTokenLocked() {
	s.tokenReqs++
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *Server) base(r *http.Request) string {
	// r.Host, not the listener address: a test may point MSAL at
	// https://login.microsoftonline.com and rewrite the dial to us
	// (docs/entra.md#endpoint-discovery), and then endpoints and aud must carry that
	// host.
	return "https://" + r.Host
}

func (s *Server) notFound(w http.ResponseWriter, r *http.Request) {
	s.log(r, "", "404")
	http.NotFound(w, r)
}

func (s *Server) openIDConfig(w http.ResponseWriter, r *http.Request) {
	t := r.PathValue("tenant")
	if t != s.tenant {
		e := s.errTenant(t)
		s.log(r, "", e.outcome())
		s.writeErr(w, e)
		return
	}
	b := s.base(r) + "/" + t
	s.log(r, "", "ok")
	// MSAL requires all three fields and an issuer on the authority's host
	// (docs/entra.md#endpoint-discovery).
	writeJSON(w, http.StatusOK, map[string]any{
		"authorization_endpoint":                b + "/oauth2/v2.0/authorize",
		"token_endpoint":                        b + "/oauth2/v2.0/token",
		"issuer":                                b + "/v2.0",
		"token_endpoint_auth_methods_supported": []string{"client_secret_post", "private_key_jwt", "client_secret_basic"},
		"jwks_uri":                              b + "/discovery/v2.0/keys",
	})
}

func (s *Server) instanceDiscovery(w http.ResponseWriter, r *http.Request) {
	host := r.Host
	s.log(r, "", "ok")
	writeJSON(w, http.StatusOK, map[string]any{
		"tenant_discovery_endpoint": "https://" + host + "/" + s.tenant + "/v2.0/.well-known/openid-configuration",
		"api-version":               "1.1",
		"metadata": []map[string]any{{
			"preferred_network": host, "preferred_cache": host, "aliases": []string{host},
		}},
	})
}

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

func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.countTokenLocked()
	s.mu.Unlock()
	clientID := ""
	resp, e := s.checkToken(r, &clientID)
	if e != nil {
		s.log(r, clientID, e.outcome())
		s.writeErr(w, e)
		return
	}
	s.log(r, clientID, "ok")
	s.mu.Lock()
	answer := s.answer
	s.mu.Unlock()
	if answer != nil {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(answer(resp)) // the client may go away mid-answer
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// SetTokenAnswer makes the token endpoint answer a good request with what
// f makes of the JSON object it would have sent (nil restores the real
// answer): a hostile or broken token service, for the client's limits.
func (s *Server) SetTokenAnswer(f func(resp map[string]any) []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.answer = f
}

func (s *Server) checkToken(r *http.Request, clientID *string) (map[string]any, *entraErr) {
	t := r.PathValue("tenant")
	if t != s.tenant {
		if t == "common" || t == "consumers" {
			return nil, &entraErr{http.StatusBadRequest, "invalid_request", 9001023, "The grant type isn't supported over the /common or /consumers endpoints. Please use the /organizations or tenant-specific endpoint."}
		}
		return nil, s.errTenant(t)
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/x-www-form-urlencoded") {
		return nil, &entraErr{http.StatusBadRequest, "invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'."}
	}
	r.Body = http.MaxBytesReader(nil, r.Body, 1<<20)
	if err := r.ParseForm(); err != nil {
		return nil, &entraErr{http.StatusBadRequest, "invalid_request", 900144, "The request body could not be parsed."}
	}
	f := r.PostForm
	*clientID = f.Get("client_id")
	if gt := f.Get("grant_type"); gt != "client_credentials" {
		if gt == "" {
			return nil, &entraErr{http.StatusBadRequest, "invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'."}
		}
		return nil, &entraErr{http.StatusBadRequest, "unsupported_grant_type", 70003, fmt.Sprintf("The app requested an unsupported grant type '%s'.", gt)}
	}
	if *clientID == "" {
		return nil, &entraErr{http.StatusBadRequest, "invalid_request", 900144, "The request body must contain the following parameter: 'client_id'."}
	}
	s.mu.Lock()
	app, ok := s.apps[*clientID]
	var a App
	if ok {
		a = *app
		a.Certs = append([]*x509.Certificate(nil), app.Certs...)
	}
	s.mu.Unlock()
	if !ok {
		return nil, &entraErr{http.StatusBadRequest, "unauthorized_client", 700016,
			fmt.Sprintf("Application with identifier '%s' was not found in the directory '%s'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.", *clientID, s.tenant)}
	}
	if e := checkScope(f.Get("scope"), s.tenant); e != nil {
		return nil, e
	}
	assertion, secret := f.Get("client_assertion"), f.Get("client_secret")
	switch {
	case assertion == "" && secret == "":
		return nil, invalidClient(7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.")
	case assertion != "" && secret != "":
		return nil, &entraErr{http.StatusBadRequest, "invalid_request", 900144, "The request must contain only one of 'client_assertion' or 'client_secret'."}
	case secret != "":
		if a.Secret == "" || subtle.ConstantTimeCompare([]byte(secret), []byte(a.Secret)) != 1 {
			return nil, invalidClient(7000215, fmt.Sprintf("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '%s'.", a.ClientID))
		}
	default:
		if typ := f.Get("client_assertion_type"); typ != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
			return nil, &entraErr{http.StatusBadRequest, "invalid_request", 900144, "The request body must contain the following parameter: 'client_assertion_type' = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'."}
		}
		if e := s.checkAssertion(assertion, &a, s.base(r)+"/"+t+"/oauth2/v2.0/token"); e != nil {
			return nil, e
		}
	}
	return s.issue(&a)
}

func checkScope(scope, tenant string) *entraErr {
	var resources []string
	for _, sc := range strings.Fields(scope) {
		switch sc {
		case "openid", "offline_access", "profile": // MSAL appends these (docs/entra.md#the-token-request)
		default:
			resources = append(resources, sc)
		}
	}
	if len(resources) != 1 {
		return &entraErr{http.StatusBadRequest, "invalid_scope", 70011, fmt.Sprintf("The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid: '%s'.", scope)}
	}
	sc := resources[0]
	if !strings.HasSuffix(sc, "/.default") {
		return &entraErr{http.StatusBadRequest, "invalid_scope", 1002012, fmt.Sprintf("The provided value for scope %s is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).", sc)}
	}
	if sc != Scope {
		return &entraErr{http.StatusBadRequest, "invalid_resource", 500011, fmt.Sprintf("The resource principal named %s was not found in the tenant named %s. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant.", strings.TrimSuffix(sc, "/.default"), tenant)}
	}
	return nil
}

// decodeThumb accepts base64url (RFC 7515) and standard base64 with padding,
// which MSAL Go sends (docs/entra.md#client-assertion).
func decodeThumb(v any) ([]byte, bool) {
	s, ok := v.(string)
	if !ok || s == "" {
		return nil, false
	}
	for _, enc := range []*base64.Encoding{base64.RawURLEncoding, base64.URLEncoding, base64.StdEncoding, base64.RawStdEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			return b, true
		}
	}
	return nil, false
}

func (s *Server) checkAssertion(assertion string, a *App, endpoint string) *entraErr {
	var hdr map[string]any
	parts := strings.Split(assertion, ".")
	if len(parts) != 3 {
		return invalidClient(50027, "Invalid JWT token. The token is not in JWS compact serialization format.")
	}
	hb, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil || json.Unmarshal(hb, &hdr) != nil {
		return invalidClient(50027, "Invalid JWT token. The header could not be decoded.")
	}
	alg, _ := hdr["alg"].(string)
	if alg != "PS256" && alg != "RS256" {
		return invalidClient(5002738, fmt.Sprintf("Invalid JWT token. '%s' is not a supported signature algorithm. Supported signing algorithms are: 'RS256, RS384, RS512, PS256'", alg))
	}
	s256, hasS256 := decodeThumb(hdr["x5t#S256"])
	s1, hasS1 := decodeThumb(hdr["x5t"])
	if !hasS256 && !hasS1 {
		if len(a.Federated) > 0 {
			return s.checkFederated(assertion, a)
		}
		return invalidClient(700027, "Client assertion failed signature validation. [Reason - The key was not found., Thumbprint of key used by client: '', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '"+a.ClientID+"'.]")
	}
	var thumb []byte
	var cert *x509.Certificate
	if hasS256 {
		// A value of the wrong length (a SHA-1 in x5t#S256) matches
		// nothing and is rejected, as Entra does (docs/entra.md#client-assertion).
		thumb = s256
		for _, c := range a.Certs {
			sum := sha256.Sum256(c.Raw)
			if subtle.ConstantTimeCompare(sum[:], s256) == 1 {
				cert = c
			}
		}
	} else {
		thumb = s1
		for _, c := range a.Certs {
			sum := sha1.Sum(c.Raw)
			if subtle.ConstantTimeCompare(sum[:], s1) == 1 {
				cert = c
			}
		}
	}
	tp := strings.ToUpper(hex.EncodeToString(thumb))
	notFound := invalidClient(700027, fmt.Sprintf("The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '%s', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '%s'. Review the documentation at https://docs.microsoft.com/en-us/graph/deployments to determine the corresponding service endpoint and https://docs.microsoft.com/en-us/graph/api/application-get?view=graph-rest-1.0&tabs=http to build a query request URL, such as 'https://graph.microsoft.com/beta/applications/%s']", tp, a.ClientID, a.ObjectID))
	if cert == nil {
		return notFound
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return notFound
	}
	now := s.clock()
	if now.After(cert.NotAfter) || now.Before(cert.NotBefore) {
		return invalidClient(700027, fmt.Sprintf("Client assertion contains an invalid signature. [Reason - The key used is expired., Thumbprint of key used by client: '%s', Found key 'Start=%s, End=%s']", tp, cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339)))
	}
	claims := jwt.MapClaims{}
	_, err = jwt.NewParser(jwt.WithValidMethods([]string{"PS256", "RS256"}), jwt.WithoutClaimsValidation()).
		ParseWithClaims(assertion, claims, func(*jwt.Token) (any, error) { return pub, nil })
	if err != nil {
		return invalidClient(700027, fmt.Sprintf("Client assertion failed signature validation. [Reason - The provided signature value did not match the expected signature value., Thumbprint of key used by client: '%s']", tp))
	}
	return s.checkClaims(claims, a.ClientID, endpoint)
}

func (s *Server) checkClaims(c jwt.MapClaims, clientID, endpoint string) *entraErr {
	aud, _ := c["aud"].(string)
	if aud != endpoint {
		return invalidClient(50012, fmt.Sprintf("Client assertion audience claim does not match Realm issuer. Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials . Expected '%s', got '%v'.", endpoint, c["aud"]))
	}
	iss, _ := c["iss"].(string)
	sub, _ := c["sub"].(string)
	if sub != iss {
		return invalidClient(50048, "Subject mismatches Issuer claim in the client assertion.")
	}
	if iss != clientID {
		return invalidClient(700021, "Client assertion application identifier doesn't match 'client_id' parameter. Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .")
	}
	return s.checkTimesAndJTI(c)
}

func numericTime(v any) (time.Time, bool) {
	switch n := v.(type) {
	case float64:
		return time.Unix(int64(n), 0), true
	case json.Number:
		i, err := n.Int64()
		return time.Unix(i, 0), err == nil
	}
	return time.Time{}, false
}

func (s *Server) checkTimesAndJTI(c jwt.MapClaims) *entraErr {
	exp, ok := numericTime(c["exp"])
	if !ok {
		return invalidClient(50027, "Invalid JWT token. The token has no 'exp' claim.")
	}
	nbf, hasNBF := numericTime(c["nbf"])
	if !hasNBF {
		if iat, ok := numericTime(c["iat"]); ok {
			nbf, hasNBF = iat, true
		}
	}
	now := s.clock()
	if hasNBF && exp.Sub(nbf) > 10*time.Minute {
		// Entra does not enforce this today (docs/entra.md#client-assertion: "5-10 minutes after nbf
		// at most"); the fake does, so the relay keeps to the advice.
		return invalidClient(700024, fmt.Sprintf("Client assertion is not within its valid time range. Current time: %s, assertion valid from %s, expiry time of assertion %s: lifetime longer than 10 minutes.", now.UTC().Format(time.RFC3339), nbf.UTC().Format(time.RFC3339), exp.UTC().Format(time.RFC3339)))
	}
	if now.After(exp.Add(s.skew)) || (hasNBF && now.Before(nbf.Add(-s.skew))) {
		return invalidClient(700024, fmt.Sprintf("Client assertion is not within its valid time range. Current time: %s, assertion valid from %s, expiry time of assertion %s. Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .", now.UTC().Format(time.RFC3339), nbf.UTC().Format(time.RFC3339), exp.UTC().Format(time.RFC3339)))
	}
	jti, _ := c["jti"].(string)
	if jti == "" {
		return invalidClient(50027, "Invalid JWT token. The token has no 'jti' claim.")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, until := range s.jtis {
		if now.After(until) {
			delete(s.jtis, k)
		}
	}
	if _, seen := s.jtis[jti]; seen {
		return invalidClient(50027, "Invalid JWT token. The token identifier 'jti' was already used (replayed client assertion).")
	}
	s.jtis[jti] = exp.Add(s.skew)
	return nil
}

func (s *Server) checkFederated(assertion string, a *App) *entraErr {
	var lastIss, lastSub, lastAud string
	for _, f := range a.Federated {
		aud := f.Audience
		if aud == "" {
			aud = DefaultFederatedAudience
		}
		for _, k := range f.Keys {
			claims := jwt.MapClaims{}
			_, err := jwt.NewParser(jwt.WithValidMethods([]string{"RS256", "PS256"}), jwt.WithoutClaimsValidation()).
				ParseWithClaims(assertion, claims, func(*jwt.Token) (any, error) { return k, nil })
			if err != nil {
				continue
			}
			iss, _ := claims["iss"].(string)
			sub, _ := claims["sub"].(string)
			auds, _ := claims.GetAudience()
			lastIss, lastSub, lastAud = iss, sub, strings.Join(auds, ",")
			if iss != f.Issuer || sub != f.Subject || !contains(auds, aud) {
				continue
			}
			return s.checkTimesAndJTIFederated(claims)
		}
	}
	return &entraErr{http.StatusBadRequest, "invalid_request", 70021, fmt.Sprintf("No matching federated identity record found for presented assertion. Assertion Issuer: '%s'. Assertion Subject: '%s'. Assertion Audience: '%s'.", lastIss, lastSub, lastAud)}
}

// checkTimesAndJTIFederated applies the time checks to a Kubernetes service
// account token, which lives up to 24 h (docs/entra.md#workload-identity) and may carry a jti reused
// across requests while the kubelet has not rotated it: only expiry matters.
func (s *Server) checkTimesAndJTIFederated(c jwt.MapClaims) *entraErr {
	exp, ok := numericTime(c["exp"])
	if !ok {
		return invalidClient(50027, "Invalid JWT token. The token has no 'exp' claim.")
	}
	now := s.clock()
	if now.After(exp.Add(s.skew)) {
		return invalidClient(700024, fmt.Sprintf("Client assertion is not within its valid time range. Current time: %s, expiry time of assertion %s.", now.UTC().Format(time.RFC3339), exp.UTC().Format(time.RFC3339)))
	}
	if nbf, ok := numericTime(c["nbf"]); ok && now.Before(nbf.Add(-s.skew)) {
		return invalidClient(700024, "Client assertion is not within its valid time range: not yet valid.")
	}
	return nil
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

func (s *Server) issue(a *App) (map[string]any, *entraErr) {
	s.mu.Lock()
	lifetime, refreshIn := s.lifetime, s.refreshIn
	s.mu.Unlock()
	signed, _, err := s.sign(a.ClientID, a.ObjectID, a.Roles, nil, lifetime)
	if err != nil {
		return nil, &entraErr{http.StatusInternalServerError, "temporarily_unavailable", 90033, "signing failed"}
	}
	secs := int64(lifetime / time.Second)
	resp := map[string]any{
		"token_type":     "Bearer",
		"expires_in":     secs,
		"ext_expires_in": secs,
		"access_token":   signed,
	}
	if refreshIn > 0 {
		resp["refresh_in"] = int64(refreshIn / time.Second)
	}
	return resp, nil
}

// Principal is a service principal that gets an access token without a
// client-credentials request of its own: a managed identity, for which the
// platform's endpoint (token/mitest) asks Entra ID.
type Principal struct {
	// AppID is the appid claim: a managed identity's client ID.
	AppID string
	// ObjectID is the oid claim: the service principal's object ID.
	ObjectID string
	// Roles are the app roles assigned to the principal (for a managed
	// identity with New-MgServicePrincipalAppRoleAssignment); nil: no
	// roles claim.
	Roles []string
	// Extra claims, e.g. xms_mirid (a managed identity's resource ID).
	Extra map[string]any
}

// Issue signs an access token for p and resource, as the token service
// does for a managed identity's platform endpoint: resource must be the
// Exchange Online resource (Audience), else the AADSTS500011 text comes
// back as the error. lifetime 0 means the server's (SetLifetime).
func (s *Server) Issue(p Principal, resource string, lifetime time.Duration) (token string, issued, expires time.Time, err error) {
	if strings.TrimSuffix(resource, "/") != Audience {
		return "", time.Time{}, time.Time{}, fmt.Errorf("AADSTS500011: The resource principal named %s was not found in the tenant named %s. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant.", resource, s.tenant)
	}
	if lifetime <= 0 {
		s.mu.Lock()
		lifetime = s.lifetime
		s.mu.Unlock()
	}
	extra := map[string]any{"sub": p.ObjectID, "idtyp": "app"}
	for k, v := range p.Extra {
		extra[k] = v
	}
	signed, now, err := s.sign(p.AppID, p.ObjectID, p.Roles, extra, lifetime)
	if err != nil {
		return "", time.Time{}, time.Time{}, fmt.Errorf("entratest: signing: %w", err)
	}
	return signed, now, now.Add(lifetime), nil
}

// sign makes an access token for the Exchange Online resource with the
// claims Exchange looks at (package comment), plus extra.
func (s *Server) sign(appID, objectID string, roles []string, extra map[string]any, lifetime time.Duration) (string, time.Time, error) {
	now := s.clock()
	claims := jwt.MapClaims{
		"aud":   Audience,
		"iss":   "https://sts.windows.net/" + s.tenant + "/",
		"tid":   s.tenant,
		"appid": appID,
		"oid":   objectID,
		"iat":   now.Unix(),
		"nbf":   now.Unix(),
		"exp":   now.Add(lifetime).Unix(),
		"uti":   newUUID(),
		"ver":   "1.0",
	}
	if roles != nil {
		claims["roles"] = roles
	}
	for k, v := range extra {
		claims[k] = v
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, claims)
	tok.Header["kid"] = s.kid
	signed, err := tok.SignedString(s.key)
	return signed, now, err
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
