package token

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/o365relay/o365relay/config/tlstest"
	"github.com/o365relay/o365relay/token/entratest"
)

// RSA key generation dominates test time under -race on 2 cores, so the
// throwaway CA and app certificates are made once per test binary.
var (
	sharedCA = sync.OnceValues(func() (*tlstest.CA, error) { return tlstest.NewCA("token test CA") })
	appCerts = sync.OnceValues(func() ([]testCert, error) {
		var out []testCert
		for i := range 3 {
			c, k, err := tlstest.SelfSigned(fmt.Sprintf("o365relay app %d", i), time.Now().Add(-time.Hour), time.Now().Add(365*24*time.Hour))
			if err != nil {
				return nil, err
			}
			out = append(out, testCert{c, k})
		}
		return out, nil
	})
)

type testCert struct {
	cert *x509.Certificate
	key  *rsa.PrivateKey
}

func certs(t testing.TB) []testCert {
	t.Helper()
	cs, err := appCerts()
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

const (
	testClientID = "11111111-2222-3333-4444-555555555555"
	testObjectID = "99999999-8888-7777-6666-555555555555"
)

// fixture is a fake Entra ID with one app whose first shared certificate is
// registered, and an HTTP client that trusts only the fake's CA and refuses
// to talk to any other host.
type fixture struct {
	srv    *entratest.Server
	client *http.Client
	guard  *hostGuard
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	ca, err := sharedCA()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := entratest.NewServer(entratest.Options{CA: ca})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("close fake Entra: %v", err)
		}
	})
	srv.AddApp(entratest.App{
		ClientID: testClientID,
		ObjectID: testObjectID,
		Certs:    []*x509.Certificate{certs(t)[0].cert},
		Secret:   "s3cr3t~value",
		Roles:    []string{"SMTP.SendAsApp"},
	})
	g := &hostGuard{
		allow: hostOf(t, srv.URL()),
		rt: &http.Transport{
			TLSClientConfig:       &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout:   5 * time.Second,
			ResponseHeaderTimeout: 10 * time.Second,
		},
	}
	client := &http.Client{Transport: g, Timeout: 20 * time.Second}
	t.Cleanup(client.CloseIdleConnections)
	return &fixture{srv: srv, client: client, guard: g}
}

func hostOf(t testing.TB, u string) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req.URL.Host
}

// hostGuard fails every request whose host is not allow, and records all.
type hostGuard struct {
	allow string
	rt    http.RoundTripper
	// rewrite, if set, sends requests for that host to allow instead (the
	// fake then sees the original Host header).
	rewrite string

	mu    sync.Mutex
	hosts []string
}

func (g *hostGuard) RoundTrip(r *http.Request) (*http.Response, error) {
	g.mu.Lock()
	g.hosts = append(g.hosts, r.URL.Host)
	g.mu.Unlock()
	if g.rewrite != "" && r.URL.Host == g.rewrite {
		r = r.Clone(r.Context())
		r.Host = g.rewrite
		r.URL.Host = g.allow
	}
	if r.URL.Host != g.allow {
		return nil, fmt.Errorf("hostGuard: request to foreign host %s refused", r.URL.Host)
	}
	return g.rt.RoundTrip(r)
}

func (g *hostGuard) CloseIdleConnections() {
	if t, ok := g.rt.(interface{ CloseIdleConnections() }); ok {
		t.CloseIdleConnections()
	}
}

func (g *hostGuard) seen() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.hosts...)
}

// source builds an EntraSource against the fixture and closes it at cleanup.
func (f *fixture) source(t testing.TB, cred Credential, mod ...func(*Options)) *EntraSource {
	t.Helper()
	o := Options{
		AuthorityHost: f.srv.URL(),
		TenantID:      f.srv.Tenant(),
		ClientID:      testClientID,
		Scope:         entratest.Scope,
		Credential:    cred,
		HTTPClient:    f.client,
	}
	for _, m := range mod {
		m(&o)
	}
	if o.Credential.Certificate != nil && o.Credential.Algorithm == "" {
		o.Credential.Algorithm = PS256 // the configuration's default
	}
	s, err := NewSource(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close source: %v", err)
		}
	})
	return s
}

func (f *fixture) certCred(t testing.TB, i int) Credential {
	t.Helper()
	tc := certs(t)[i]
	c, err := NewCertificate(tc.cert, nil, tc.key)
	if err != nil {
		t.Fatal(err)
	}
	return Credential{Certificate: c}
}

// verifyAccessToken checks an issued token with the fake's key and the
// claims a fake Exchange relies on.
func (f *fixture) verifyAccessToken(t *testing.T, tok Token) jwt.MapClaims {
	t.Helper()
	claims := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(tok.Value.Reveal(), claims, func(*jwt.Token) (any, error) { return f.srv.PublicKey(), nil },
		jwt.WithValidMethods([]string{"RS256"}), jwt.WithAudience(entratest.Audience), jwt.WithExpirationRequired())
	if err != nil {
		t.Fatalf("access token does not verify: %v", err)
	}
	if claims["appid"] != testClientID || claims["tid"] != f.srv.Tenant() || claims["oid"] != testObjectID {
		t.Fatalf("claims %v", claims)
	}
	if time.Until(tok.ExpiresOn) <= 0 {
		t.Fatalf("token ExpiresOn %v is in the past", tok.ExpiresOn)
	}
	return claims
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// encryptPKCS8 writes an "ENCRYPTED PRIVATE KEY" the way OpenSSL 3 does by
// default (PBES2, PBKDF2-HMAC-SHA256, AES-256-CBC); a Go-side encoder so the
// decoder is tested without depending on openssl at test time.
func encryptPKCS8(t testing.TB, key *rsa.PrivateKey, password string, iter int) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	salt := make([]byte, 16)
	iv := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		t.Fatal(err)
	}
	if _, err := rand.Read(iv); err != nil {
		t.Fatal(err)
	}
	k, err := pbkdf2.Key(sha256.New, password, salt, iter, 32)
	if err != nil {
		t.Fatal(err)
	}
	n := aes.BlockSize - len(der)%aes.BlockSize
	pt := append(der, make([]byte, n)...)
	for i := len(der); i < len(pt); i++ {
		pt[i] = byte(n)
	}
	block, err := aes.NewCipher(k)
	if err != nil {
		t.Fatal(err)
	}
	ct := make([]byte, len(pt))
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(ct, pt)
	mustMarshal := func(v any) []byte {
		b, err := asn1.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	kdf := pbkdf2Params{Salt: salt, Iteration: iter, PRF: pkix.AlgorithmIdentifier{Algorithm: oidHMACSHA256, Parameters: asn1.NullRawValue}}
	params := pbes2Params{
		KeyDerivationFunc: pkix.AlgorithmIdentifier{Algorithm: oidPBKDF2, Parameters: asn1.RawValue{FullBytes: mustMarshal(kdf)}},
		EncryptionScheme:  pkix.AlgorithmIdentifier{Algorithm: oidAES256CBC, Parameters: asn1.RawValue{FullBytes: mustMarshal(iv)}},
	}
	info := encryptedPrivateKeyInfo{
		Algo:          pkix.AlgorithmIdentifier{Algorithm: oidPBES2, Parameters: asn1.RawValue{FullBytes: mustMarshal(params)}},
		EncryptedData: ct,
	}
	return pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: mustMarshal(info)})
}

// coldCallers has n callers ask s for a token at once and fails unless all
// got the same one; it returns that token.
func coldCallers(t *testing.T, s *EntraSource, n int) Token {
	t.Helper()
	var wg sync.WaitGroup
	toks := make([]Token, n)
	errs := make([]error, n)
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			toks[i], errs[i] = s.Token(ctxT(t))
		})
	}
	close(start)
	wg.Wait()
	for i := range n {
		if errs[i] != nil || toks[i] != toks[0] {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
	}
	return toks[0]
}
