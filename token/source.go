package token

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/cache"
	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/confidential"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/o365relay/o365relay/config/secret"
)

// Timing. See Source for the rules they implement.
const (
	requestTimeout = 30 * time.Second // per token request, including discovery
	backoffMin     = time.Second
	backoffMax     = 5 * time.Minute
	refreshLeadMin = 10 * time.Minute
	// minRefreshInterval stops a server that hands out zero-lifetime tokens
	// from turning Run into a busy loop.
	minRefreshInterval = time.Second
	// expiryMargin: a token is handed out only if it stays valid this long,
	// so that the SMTP session that uses it can still AUTH.
	expiryMargin = 30 * time.Second
)

// microsoftHosts are Entra ID's public and sovereign-cloud hosts (MSAL's
// aadTrustedHostList, authority.go). Only for these is MSAL's instance
// discovery left on; it then queries the same host. For any other host it
// would query login.microsoftonline.com (docs/entra.md#endpoint-discovery), which a
// private or test authority must never cause.
var microsoftHosts = map[string]bool{
	"login.microsoftonline.com":        true,
	"login.microsoft.com":              true,
	"login.windows.net":                true,
	"sts.windows.net":                  true,
	"login.microsoftonline.us":         true,
	"login-us.microsoftonline.com":     true,
	"login.usgovcloudapi.net":          true,
	"login.partner.microsoftonline.cn": true,
	"login.chinacloudapi.cn":           true,
	"login.microsoftonline.de":         true,
}

// Credential is how the app proves its identity. Set exactly one of
// Certificate, ClientSecret, FederatedTokenFile and ManagedIdentity.
type Credential struct {
	// Certificate signs a client assertion (docs/entra.md#client-assertion).
	Certificate *Certificate
	Algorithm   Algorithm // PS256 or RS256 (config's assertion_algorithm)
	SendX5C     bool      // send the chain (subject name + issuer auth)

	// ClientSecret is a client secret value.
	ClientSecret secret.Secret

	// FederatedTokenFile is a workload-identity token file
	// (AZURE_FEDERATED_TOKEN_FILE, docs/entra.md#workload-identity). It is re-read for
	// every token request because the kubelet rotates it.
	FederatedTokenFile string

	// ManagedIdentity gets tokens from the platform's managed-identity
	// endpoint instead of Entra ID's token endpoint (managedidentity.go).
	ManagedIdentity *ManagedIdentity
}

func (c Credential) kind() (string, error) {
	n := 0
	kind := ""
	if c.Certificate != nil {
		n, kind = n+1, "certificate"
	}
	if !c.ClientSecret.IsZero() {
		n, kind = n+1, "client secret"
	}
	if c.FederatedTokenFile != "" {
		n, kind = n+1, "federated token file"
	}
	if c.ManagedIdentity != nil {
		n, kind = n+1, "managed identity"
	}
	if n != 1 {
		return "", fmt.Errorf("token: set exactly one credential (certificate, client secret, federated token file or managed identity), %d set", n)
	}
	return kind, nil
}

// Options configure a Source.
type Options struct {
	// AuthorityHost, TenantID and Scope are the configuration's values
	// (config.Config): the token package has no defaults of its own.
	AuthorityHost string // required for an app; unused by a managed identity
	TenantID      string // required for an app; unused by a managed identity
	ClientID      string // the app's; a managed identity's is in Credential
	Scope         string // required
	Credential    Credential
	// HTTPClient talks to Entra ID, or to the managed-identity endpoint.
	// Nil: one with timeouts and the system roots (for a managed
	// identity: no proxy, short dial timeout). Tests pass one trusting a
	// tlstest CA, or serving the managed-identity endpoint.
	HTTPClient *http.Client
	// Clock is now for token expiry, assertions and backoff. Token.ExpiresOn
	// is in this clock's frame. Run waits on real timers for the durations
	// this clock implies.
	Clock  func() time.Time // default time.Now
	Logger *zap.Logger      // default zap.NewNop()
}

// Status is the EntraSource's state, for /readyz and `o365relay doctor`.
type Status struct {
	HasToken      bool      // a token is held that has not expired
	ExpiresOn     time.Time // of the held token
	LastRefresh   time.Time // last successful token request
	LastError     error     // of the last token request; nil after a success
	EverSucceeded bool
	NextRefresh   time.Time // when Run will fetch next
}

// EntraSource implements Source for one app and tenant, with MSAL's
// confidential client.
//
// Caching. MSAL keeps its own in-memory token cache and refetches only when
// fewer than 5 minutes remain or refresh_in has passed
// (docs/entra.md#refresh-and-caching); it has no single flight. The Source keeps the authoritative cache
// itself and gives MSAL a cache accessor (WithCache) whose Replace loads an
// empty cache before every read and write, so every AcquireTokenByCredential
// is a real token request. That is robust because it uses MSAL's documented
// extension point only: no reliance on its internal refresh rules, on its
// package-level clock (base.Now) or on tokens <5 min being uncached, and
// endpoint resolution (openid-configuration) stays cached by MSAL.
//
// Single flight. All token requests — cold Token calls, Refresh calls and
// Run — go through one singleflight key: however many callers wait, one
// request is in flight. Callers wait with their own ctx; the request itself
// runs under the EntraSource's context with a 30 s deadline, so one impatient
// caller cannot cancel it for the others.
//
// Refresh rule (Run). With lifetime L = expiry − time obtained, the next
// request is at expiry − lead, lead = max(10 min, L/3) but at most L/2: a
// 60–90 min Entra token is refreshed with 20–30 minutes left (well before
// MSAL's own 5-minute rule and any Exchange session that starts with it),
// a 24 h workload-identity token after 16 h, and short test lifetimes at
// half-life instead of immediately. A refresh_in from Entra, if earlier,
// wins. Never more often than once a second.
//
// Failures. A failed request backs off exponentially with jitter: 1 s, 2 s,
// 4 s … capped at 5 min, each delay drawn uniformly from [d/2, d]. During
// the backoff, a held token keeps being handed out until 30 s before it
// expires (an Entra outage must not stop mail while the token is good), and a
// caller with no usable token gets the last error at once instead of a new
// request (AADSTS50196 punishes hammering).
//
// Errors. Token, Refresh and RotateCertificate return an *EntraError: what
// failed, explained (AADSTS code, hint). The token package says nothing of
// SMTP; the Exchange client turns a token failure into the reply a waiting
// message gets (upstream's tokenError).
type EntraSource struct {
	clientID, tenant, authority string
	scopes                      []string
	cred                        Credential
	credKind                    string
	client                      confidential.Client
	httpClient                  *http.Client
	// acquire makes one token request, and explain turns its failure into
	// an *EntraError: the one step that differs between an app
	// registration (Entra ID's token endpoint, via client) and a managed
	// identity (the platform's endpoint, managedidentity.go).
	acquire   func(context.Context) (confidential.AuthResult, error)
	explain   func(error) *EntraError
	clock     func() time.Time
	log       *zap.Logger
	discovery bool // MSAL instance discovery (public clouds only)

	backoffMin, backoffMax time.Duration // fields so tests can shorten them

	sf     singleflight.Group
	ctx    context.Context // cancelled by Close; parent of every request
	cancel context.CancelFunc
	kick   chan struct{} // buffered 1: the schedule changed, Run recomputes

	mu          sync.Mutex
	cert        *Certificate // signs assertions; swapped by RotateCertificate
	thumbprint  string       // SHA-1 hex of cert, for hints
	closed      bool
	wg          sync.WaitGroup // in-flight requests
	tok         Token
	obtained    time.Time
	refreshOn   time.Time
	lastRefresh time.Time
	lastErr     error
	everOK      bool
	failures    int
	nextAttempt time.Time
}

var _ Source = (*EntraSource)(nil)

// emptyCache is the MSAL cache accessor that makes MSAL forget every token:
// see the EntraSource doc comment.
type emptyCache struct{}

func (emptyCache) Replace(_ context.Context, u cache.Unmarshaler, _ cache.ReplaceHints) error {
	return u.Unmarshal([]byte("{}"))
}

func (emptyCache) Export(context.Context, cache.Marshaler, cache.ExportHints) error { return nil }

// NewSource validates opts and builds the MSAL client. It makes no request.
func NewSource(opts Options) (*EntraSource, error) {
	kind, err := opts.Credential.kind()
	if err != nil {
		return nil, err
	}
	scope := opts.Scope
	switch {
	case scope == "":
		return nil, errors.New("token: scope is required (config's scope setting)")
	case !strings.HasSuffix(scope, "/.default"):
		return nil, fmt.Errorf("token: scope %q must end in /.default (AADSTS1002012)", scope)
	}
	s := &EntraSource{
		clientID:   opts.ClientID,
		tenant:     opts.TenantID,
		scopes:     []string{scope},
		cred:       opts.Credential,
		credKind:   kind,
		httpClient: opts.HTTPClient,
		clock:      opts.Clock,
		log:        opts.Logger,
		backoffMin: backoffMin,
		backoffMax: backoffMax,
		kick:       make(chan struct{}, 1),
	}
	if s.clock == nil {
		s.clock = time.Now
	}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	if m := opts.Credential.ManagedIdentity; m != nil {
		err = s.initManagedIdentity(*m, opts.HTTPClient)
	} else {
		err = s.initApp(opts)
	}
	if err != nil {
		return nil, err
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// initApp makes s get its tokens from Entra ID's token endpoint as the app
// registration opts names, with MSAL's confidential client.
func (s *EntraSource) initApp(opts Options) error {
	if opts.ClientID == "" || opts.TenantID == "" {
		return errors.New("token: client ID and tenant ID are required")
	}
	switch strings.ToLower(opts.TenantID) {
	case "common", "consumers", "organizations":
		// AADSTS9001023: client credentials need a specific tenant.
		return fmt.Errorf("token: tenant %q cannot be used with client credentials; use the Directory (tenant) ID", opts.TenantID)
	}
	host := opts.AuthorityHost
	if host == "" {
		return errors.New("token: authority host is required (config's authority_host setting)")
	}
	hu, err := url.Parse(host)
	if err != nil || hu.Scheme != "https" || hu.Host == "" {
		// MSAL requires https (authority.go NewInfoFromAuthorityURI).
		return fmt.Errorf("token: authority host %q must be an https URL", host)
	}
	if s.authority, err = url.JoinPath(host, opts.TenantID); err != nil {
		return fmt.Errorf("token: authority: %w", err)
	}
	if s.httpClient == nil {
		s.httpClient = defaultHTTPClient()
	}
	// Every answer is bounded before MSAL parses it (limits.go).
	s.httpClient = LimitedClient(s.httpClient)
	if c := opts.Credential.Certificate; c != nil {
		if c.key == nil {
			return errors.New("token: certificate has no private key")
		}
		if a := opts.Credential.Algorithm; a != PS256 && a != RS256 {
			return fmt.Errorf("token: assertion algorithm %q: use PS256 or RS256 (config's assertion_algorithm)", a)
		}
		s.cert, s.thumbprint = c, c.ThumbprintSHA1Hex()
		s.warnExpiry(c)
	}
	var cred confidential.Credential
	switch {
	case opts.Credential.Certificate != nil:
		cred = confidential.NewCredFromAssertionCallback(s.certAssertion)
	case opts.Credential.FederatedTokenFile != "":
		cred = confidential.NewCredFromAssertionCallback(s.federatedAssertion)
	default:
		cred, err = confidential.NewCredFromSecret(opts.Credential.ClientSecret.Reveal())
		if err != nil {
			return errors.New("token: client secret rejected by MSAL")
		}
	}
	s.discovery = microsoftHosts[strings.ToLower(hu.Host)]
	if s.client, err = s.newClient(cred); err != nil {
		return err
	}
	s.acquire = func(ctx context.Context) (confidential.AuthResult, error) {
		return s.client.AcquireTokenByCredential(ctx, s.scopes)
	}
	s.explain = toEntraError
	return nil
}

func (s *EntraSource) newClient(cred confidential.Credential) (confidential.Client, error) {
	c, err := confidential.New(s.authority, s.clientID, cred,
		confidential.WithHTTPClient(s.httpClient),
		confidential.WithInstanceDiscovery(s.discovery),
		confidential.WithCache(emptyCache{}))
	if err != nil {
		return c, fmt.Errorf("token: %s", sanitize(err.Error()))
	}
	return c, nil
}

// expiryWarning is how long before its end a certificate is reported as
// expiring: Entra refuses an expired one (AADSTS700027, azurestep.Credential),
// and a month leaves time to upload and roll out its successor.
const expiryWarning = 30 * 24 * time.Hour

// warnExpiry logs an expired or soon-expiring certificate.
func (s *EntraSource) warnExpiry(c *Certificate) {
	switch now := s.clock(); {
	case now.After(c.NotAfter()):
		s.log.Error("certificate has expired; upload a new one (Certificates & secrets)", zap.Stringer("certificate", c))
	case now.Add(expiryWarning).After(c.NotAfter()):
		s.log.Warn("certificate expires within 30 days; upload its successor (Certificates & secrets)",
			zap.Stringer("certificate", c), zap.Time("not_after", c.NotAfter()))
	}
}

// Certificate returns the certificate that signs assertions now (nil for a
// secret or federated credential).
func (s *EntraSource) Certificate() *Certificate {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cert
}

// RotateCertificate switches to c only after Entra ID has accepted it: it
// makes one token request signed with c, outside the single flight and with
// a client of its own, and on success signs every later assertion with c and
// holds the token it got. On failure (c not uploaded yet, AADSTS700027; an
// outage) the current certificate stays in use and the error says why, so a
// rotation can never leave the relay without a working credential. Rotating
// to the certificate already in use is a no-op.
func (s *EntraSource) RotateCertificate(ctx context.Context, c *Certificate) error {
	s.mu.Lock()
	cur, closed := s.cert, s.closed
	if !closed {
		s.wg.Add(1) // Close waits for this request too
	}
	s.mu.Unlock()
	if closed {
		return errClosed
	}
	defer s.wg.Done()
	switch {
	case cur == nil:
		return errors.New("token: the relay does not use a certificate; restart it to change the kind of credential")
	case c == nil || c.key == nil:
		return errors.New("token: certificate has no private key")
	case cur.ThumbprintSHA256() == c.ThumbprintSHA256():
		return nil
	}
	client, err := s.newClient(confidential.NewCredFromAssertionCallback(
		func(_ context.Context, o confidential.AssertionRequestOptions) (string, error) {
			return s.assertionWith(c, o)
		}))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	defer context.AfterFunc(s.ctx, cancel)() // Close cancels it
	start := time.Now()
	ar, err := client.AcquireTokenByCredential(ctx, s.scopes)
	realNow := time.Now()
	requestDuration.Observe(realNow.Sub(start).Seconds())
	if err == nil && ar.AccessToken == "" {
		err = errors.New("token endpoint returned no access token")
	}
	if err != nil {
		ee := toEntraError(err)
		if ee.Code() == 700027 {
			ee.Hint += fmt.Sprintf("; the new certificate has thumbprint %s", c.ThumbprintSHA1Hex())
		}
		requestsTotal.WithLabelValues("failure", entraCode(ee)).Inc()
		return ee
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.signal()
	s.cert, s.thumbprint = c, c.ThumbprintSHA1Hex()
	s.acceptedLocked(ar, realNow, s.clock())
	s.warnExpiry(c)
	return nil
}

func defaultHTTPClient() *http.Client {
	return &http.Client{
		Timeout: requestTimeout,
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			ForceAttemptHTTP2:     true,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: requestTimeout,
			IdleConnTimeout:       90 * time.Second,
			MaxIdleConns:          4,
		},
	}
}

func (s *EntraSource) certAssertion(_ context.Context, o confidential.AssertionRequestOptions) (string, error) {
	s.mu.Lock()
	c := s.cert
	s.mu.Unlock()
	return s.assertionWith(c, o)
}

func (s *EntraSource) assertionWith(c *Certificate, o confidential.AssertionRequestOptions) (string, error) {
	a, err := c.Assertion(AssertionParams{
		ClientID:  o.ClientID,
		Audience:  o.TokenEndpoint,
		Algorithm: s.cred.Algorithm,
		X5C:       s.cred.SendX5C,
		Now:       s.clock(),
	})
	return a.Reveal(), err
}

// maxFederatedToken bounds the token file read; SA tokens are ~1–2 KiB.
const maxFederatedToken = 64 << 10

func (s *EntraSource) federatedAssertion(context.Context, confidential.AssertionRequestOptions) (string, error) {
	path := s.cred.FederatedTokenFile
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("token: federated token file: %w", err)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxFederatedToken+1))
	if cerr := f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("token: federated token file %s: %w", path, err)
	}
	if len(b) > maxFederatedToken {
		return "", fmt.Errorf("token: federated token file %s is larger than %d bytes", path, maxFederatedToken)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("token: federated token file %s is empty", path)
	}
	return tok, nil
}

// Close stops in-flight token requests and waits for them. Run must have
// returned or be returning; Token and Refresh fail afterwards.
func (s *EntraSource) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	s.httpClient.CloseIdleConnections()
	return nil
}

// usableLocked: a token is handed out while it stays valid for expiryMargin
// (or a quarter of its lifetime, for very short test lifetimes).
func (s *EntraSource) usableLocked(now time.Time) bool {
	if s.tok.Value.IsZero() {
		return false
	}
	margin := min(expiryMargin, s.tok.ExpiresOn.Sub(s.obtained)/4)
	return now.Before(s.tok.ExpiresOn.Add(-margin))
}

// backoffErrLocked returns the last error while a backoff is running.
func (s *EntraSource) backoffErrLocked(now time.Time) error {
	if s.lastErr != nil && now.Before(s.nextAttempt) {
		return s.lastErr
	}
	return nil
}

// Token returns the held token, or fetches one (single flight) if none is
// usable, unless a backoff is running, in which case it returns the last
// error immediately.
func (s *EntraSource) Token(ctx context.Context) (Token, error) {
	s.mu.Lock()
	now := s.clock()
	if s.usableLocked(now) {
		t := s.tok
		s.mu.Unlock()
		return t, nil
	}
	if err := s.backoffErrLocked(now); err != nil {
		s.mu.Unlock()
		return Token{}, err
	}
	s.mu.Unlock()
	return s.fetchShared(ctx)
}

// Refresh fetches a token other than rejected (Exchange answered 535 to
// it). If the held token already differs from rejected, it is returned
// without a request; concurrent Refresh calls share one request.
func (s *EntraSource) Refresh(ctx context.Context, rejected Token) (Token, error) {
	s.mu.Lock()
	now := s.clock()
	if s.usableLocked(now) && s.tok.Value != rejected.Value {
		t := s.tok
		s.mu.Unlock()
		return t, nil
	}
	if err := s.backoffErrLocked(now); err != nil {
		s.mu.Unlock()
		return Token{}, err
	}
	s.mu.Unlock()
	return s.fetchShared(ctx)
}

var errClosed = errors.New("token: source closed")

// fetchShared joins or starts the one in-flight token request and waits for
// it or for ctx.
func (s *EntraSource) fetchShared(ctx context.Context) (Token, error) {
	ch := s.sf.DoChan("token", func() (any, error) {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return Token{}, &EntraError{Description: errClosed.Error()}
		}
		s.wg.Add(1)
		s.mu.Unlock()
		defer s.wg.Done()
		return s.fetch()
	})
	select {
	case r := <-ch:
		t, _ := r.Val.(Token)
		return t, r.Err
	case <-ctx.Done():
		return Token{}, &EntraError{Description: "gave up waiting for the token request: " + ctx.Err().Error()}
	}
}

// fetch makes one token request and records its outcome.
func (s *EntraSource) fetch() (Token, error) {
	ctx, cancel := context.WithTimeout(s.ctx, requestTimeout)
	defer cancel()
	start := time.Now()
	ar, err := s.acquire(ctx)
	// MSAL computes ExpiresOn from time.Now() when it parses expires_in;
	// re-base the lifetime on the injected clock.
	realNow := time.Now()
	requestDuration.Observe(realNow.Sub(start).Seconds())
	now := s.clock()

	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.signal()
	if err == nil && ar.AccessToken == "" {
		err = errors.New("token endpoint returned no access token")
	}
	if err != nil {
		ee := s.explain(err)
		if ee.Code() == 700027 && s.thumbprint != "" {
			ee.Hint += fmt.Sprintf("; this relay presents the certificate with thumbprint %s", s.thumbprint)
		}
		requestsTotal.WithLabelValues("failure", entraCode(ee)).Inc()
		refreshFailures.Inc()
		s.failures++
		d := s.backoffLocked()
		s.nextAttempt = now.Add(d)
		s.lastErr = ee
		fields := []zap.Field{zap.String("credential", s.credKind), zap.Error(ee), zap.Bool("temporary", ee.Temporary()),
			zap.Int("failures", s.failures), zap.Duration("retry_in", d)}
		if !s.tok.Value.IsZero() {
			fields = append(fields, zap.Time("held_token_expires", s.tok.ExpiresOn))
		}
		s.log.Warn("token request failed", fields...)
		return Token{}, s.lastErr
	}
	s.acceptedLocked(ar, realNow, now)
	return s.tok, nil
}

// entraCode is the metric label for a failed request.
func entraCode(ee *EntraError) string {
	switch {
	case ee.Code() != 0:
		return fmt.Sprint(ee.Code())
	case ee.HTTPStatus != 0:
		return fmt.Sprintf("http_%d", ee.HTTPStatus)
	}
	return "network"
}

// acceptedLocked holds the token of a successful request.
func (s *EntraSource) acceptedLocked(ar confidential.AuthResult, realNow, now time.Time) {
	lifetime := ar.ExpiresOn.Sub(realNow)
	s.tok = Token{Value: secret.Secret(ar.AccessToken), ExpiresOn: now.Add(lifetime)}
	s.obtained = now
	s.refreshOn = time.Time{}
	if ro := ar.Metadata.RefreshOn; !ro.IsZero() {
		s.refreshOn = now.Add(ro.Sub(realNow))
	}
	s.lastRefresh = now
	s.lastErr = nil
	s.everOK = true
	s.failures = 0
	s.nextAttempt = time.Time{}
	requestsTotal.WithLabelValues("success", "").Inc()
	expiryTimestamp.Set(float64(s.tok.ExpiresOn.Unix()))
	s.log.Info("token acquired", zap.String("credential", s.credKind), zap.Time("expires", s.tok.ExpiresOn),
		zap.Duration("lifetime", lifetime.Round(time.Second)), zap.Time("next_refresh", s.nextRefreshLocked(now)))
}

func (s *EntraSource) signal() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// backoffLocked is the delay after the s.failures-th consecutive failure:
// exponential from backoffMin, capped at backoffMax, jittered in [d/2, d]
// so that many relays do not retry in step.
func (s *EntraSource) backoffLocked() time.Duration {
	d := s.backoffMin
	for i := 1; i < s.failures && d < s.backoffMax; i++ {
		d *= 2
	}
	d = min(d, s.backoffMax)
	half := d / 2
	return half + rand.N(d-half+1) // math/rand/v2: jitter needs no crypto
}

// nextRefreshLocked is when Run fetches next (rule in the EntraSource doc).
func (s *EntraSource) nextRefreshLocked(now time.Time) time.Time {
	at := now
	if !s.tok.Value.IsZero() {
		exp := s.tok.ExpiresOn
		life := exp.Sub(s.obtained)
		lead := min(max(refreshLeadMin, life/3), life/2)
		at = exp.Add(-lead)
		if !s.refreshOn.IsZero() && s.refreshOn.Before(at) {
			at = s.refreshOn
		}
		if floor := s.lastRefresh.Add(minRefreshInterval); at.Before(floor) {
			at = floor
		}
	}
	if s.lastErr != nil && at.Before(s.nextAttempt) {
		at = s.nextAttempt
	}
	return at
}

// Run keeps a fresh token until ctx is done (then it returns nil): it
// fetches one at once if none is held and then refreshes by the rule in the
// EntraSource doc comment, in the background, so that no caller waits for Entra
// ID in steady state. Run a single Run per Source.
func (s *EntraSource) Run(ctx context.Context) error {
	for {
		s.mu.Lock()
		closed := s.closed
		s.mu.Unlock()
		if ctx.Err() != nil || closed {
			return nil
		}
		s.mu.Lock()
		d := s.nextRefreshLocked(s.clock()).Sub(s.clock())
		s.mu.Unlock()
		if d <= 0 {
			_, _ = s.fetchShared(ctx) // outcome recorded and logged by fetch
			continue
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-s.kick:
			// Another caller fetched: recompute from the new state.
			t.Stop()
		case <-t.C:
		}
	}
}

// Status reports the EntraSource's state.
func (s *EntraSource) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock()
	st := Status{
		LastRefresh:   s.lastRefresh,
		LastError:     s.lastErr,
		EverSucceeded: s.everOK,
		NextRefresh:   s.nextRefreshLocked(now),
	}
	if !s.tok.Value.IsZero() && now.Before(s.tok.ExpiresOn) {
		st.HasToken, st.ExpiresOn = true, s.tok.ExpiresOn
	}
	return st
}
