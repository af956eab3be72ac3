package token

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/confidential"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"
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

var errClosed = errors.New("token: source closed")
