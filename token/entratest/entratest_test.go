package entratest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/o365relay/o365relay/config/tlstest"
)

var shared = sync.OnceValues(func() (*fixtureKeys, error) {
	ca, err := tlstest.NewCA("entratest test CA")
	if err != nil {
		return nil, err
	}
	cert, key, err := tlstest.SelfSigned("app", time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	if err != nil {
		return nil, err
	}
	return &fixtureKeys{ca: ca, cert: cert, key: key}, nil
})

type fixtureKeys struct {
	ca   *tlstest.CA
	cert *x509.Certificate
	key  *rsa.PrivateKey
}

const clientID = "aaaaaaaa-0000-0000-0000-000000000001"

type env struct {
	*fixtureKeys
	srv    *Server
	client *http.Client
	now    time.Time
}

func newEnv(t *testing.T) *env {
	t.Helper()
	k, err := shared()
	if err != nil {
		t.Fatal(err)
	}
	e := &env{fixtureKeys: k, now: time.Now()}
	e.srv, err = NewServer(Options{CA: k.ca, Clock: func() time.Time { return e.now }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.srv.Close(); err != nil {
			t.Error(err)
		}
	})
	e.srv.AddApp(App{ClientID: clientID, ObjectID: "oid-1", Certs: []*x509.Certificate{k.cert}, Secret: "sekrit", Roles: []string{"SMTP.SendAsApp"}})
	e.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: k.ca.Pool()}}}
	t.Cleanup(e.client.CloseIdleConnections)
	return e
}

// assertion builds a client assertion; mod may change claims and header.
func (e *env) assertion(t *testing.T, mod func(jwt.MapClaims, map[string]any)) string {
	t.Helper()
	c := jwt.MapClaims{
		"aud": e.srv.TokenEndpoint(), "iss": clientID, "sub": clientID,
		"jti": base64.RawURLEncoding.EncodeToString([]byte(t.Name() + time.Now().String())),
		"nbf": e.now.Unix(), "exp": e.now.Add(5 * time.Minute).Unix(),
	}
	sum := sha256.Sum256(e.cert.Raw)
	h := map[string]any{"x5t#S256": base64.RawURLEncoding.EncodeToString(sum[:])}
	if mod != nil {
		mod(c, h)
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodPS256, c)
	for k, v := range h {
		if v == nil {
			delete(tok.Header, k)
		} else {
			tok.Header[k] = v
		}
	}
	s, err := tok.SignedString(e.key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type answer struct {
	status int
	body   map[string]any
}

func (a answer) code() int {
	codes, _ := a.body["error_codes"].([]any)
	if len(codes) == 0 {
		return 0
	}
	f, _ := codes[0].(float64)
	return int(f)
}

func (e *env) post(t *testing.T, tenant string, form url.Values) answer {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, e.srv.URL()+tenant+"/oauth2/v2.0/token", strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := resp.Body.Close(); err != nil {
			t.Error(err)
		}
	}()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	a := answer{status: resp.StatusCode}
	if err := json.Unmarshal(b, &a.body); err != nil {
		t.Fatalf("not JSON: %q", b)
	}
	return a
}

func (e *env) form(assertion string) url.Values {
	return url.Values{
		"grant_type":            {"client_credentials"},
		"client_id":             {clientID},
		"scope":                 {Scope + " openid offline_access profile"},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
		"client_assertion":      {assertion},
		"client_info":           {"1"},
	}
}

func TestIssuesVerifiableToken(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.srv.SetRefreshIn(30 * time.Minute)
	a := e.post(t, e.srv.Tenant(), e.form(e.assertion(t, nil)))
	if a.status != 200 || a.body["token_type"] != "Bearer" || a.body["expires_in"] != float64(3599) || a.body["ext_expires_in"] != float64(3599) || a.body["refresh_in"] != float64(1800) {
		t.Fatalf("%d %v", a.status, a.body)
	}
	claims := jwt.MapClaims{}
	tok, err := jwt.ParseWithClaims(a.body["access_token"].(string), claims, func(*jwt.Token) (any, error) { return e.srv.PublicKey(), nil },
		jwt.WithValidMethods([]string{"RS256"}), jwt.WithAudience(Audience), jwt.WithIssuer("https://sts.windows.net/"+e.srv.Tenant()+"/"),
		jwt.WithTimeFunc(func() time.Time { return e.now }))
	if err != nil {
		t.Fatal(err)
	}
	if tok.Header["kid"] != e.srv.KeyID() || claims["tid"] != e.srv.Tenant() || claims["appid"] != clientID || claims["oid"] != "oid-1" {
		t.Fatalf("%v %v", tok.Header, claims)
	}
	if roles, _ := claims["roles"].([]any); len(roles) != 1 || roles[0] != "SMTP.SendAsApp" {
		t.Fatalf("roles %v", claims["roles"])
	}
	if r := e.srv.Requests(); len(r) != 1 || r[0].Outcome != "ok" || r[0].ClientID != clientID {
		t.Fatalf("log %+v", r)
	}
}

func TestNoConsentNoRoles(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.srv.AddApp(App{ClientID: clientID, ObjectID: "oid-1", Certs: []*x509.Certificate{e.cert}})
	a := e.post(t, e.srv.Tenant(), e.form(e.assertion(t, nil)))
	claims := jwt.MapClaims{}
	if _, _, err := jwt.NewParser().ParseUnverified(a.body["access_token"].(string), claims); err != nil {
		t.Fatal(err)
	}
	if _, ok := claims["roles"]; ok {
		t.Fatal("roles without consent")
	}
}

func TestStrictness(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	es256, err := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{"iss": clientID}).SignedString(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	_, otherKey, err := tlstest.SelfSigned("other", time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	wrongSig := func() string {
		c := jwt.MapClaims{"aud": e.srv.TokenEndpoint(), "iss": clientID, "sub": clientID, "jti": "x-wrongsig", "nbf": e.now.Unix(), "exp": e.now.Add(time.Minute).Unix()}
		tok := jwt.NewWithClaims(jwt.SigningMethodPS256, c)
		sum := sha256.Sum256(e.cert.Raw)
		tok.Header["x5t#S256"] = base64.RawURLEncoding.EncodeToString(sum[:])
		s, err := tok.SignedString(otherKey)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}()
	set := func(k string, v any) func(jwt.MapClaims, map[string]any) {
		return func(c jwt.MapClaims, _ map[string]any) {
			if v == nil {
				delete(c, k)
			} else {
				c[k] = v
			}
		}
	}
	cases := []struct {
		name   string
		tenant string
		form   func() url.Values
		status int
		code   int
		text   string
	}{
		{"unknown tenant", "nope", func() url.Values { return e.form(e.assertion(t, nil)) }, 400, 90002, "Tenant 'nope' not found"},
		{"common", "common", func() url.Values { return e.form(e.assertion(t, nil)) }, 400, 9001023, "/common"},
		{"unknown client", "", func() url.Values { f := e.form(e.assertion(t, nil)); f.Set("client_id", "x"); return f }, 400, 700016, "was not found in the directory"},
		{"grant type", "", func() url.Values { f := e.form(e.assertion(t, nil)); f.Set("grant_type", "password"); return f }, 400, 70003, "unsupported grant type"},
		{"scope without .default", "", func() url.Values {
			f := e.form(e.assertion(t, nil))
			f.Set("scope", "https://outlook.office365.com/SMTP.Send")
			return f
		}, 400, 1002012, "/.default"},
		{"graph scope", "", func() url.Values {
			f := e.form(e.assertion(t, nil))
			f.Set("scope", "https://graph.microsoft.com/.default")
			return f
		}, 400, 500011, "resource principal"},
		{"no credential", "", func() url.Values { f := e.form(""); f.Del("client_assertion"); return f }, 401, 7000218, "client_assertion' or 'client_secret'"},
		{"wrong secret", "", func() url.Values {
			return url.Values{"grant_type": {"client_credentials"}, "client_id": {clientID}, "scope": {Scope}, "client_secret": {"nope"}}
		}, 401, 7000215, "Invalid client secret"},
		{"unknown thumbprint", "", func() url.Values {
			return e.form(e.assertion(t, func(_ jwt.MapClaims, h map[string]any) {
				h["x5t#S256"] = base64.RawURLEncoding.EncodeToString(make([]byte, 32))
			}))
		}, 401, 700027, "Thumbprint of key used by client: '0000"},
		{"sha1 value in x5t#S256", "", func() url.Values {
			return e.form(e.assertion(t, func(_ jwt.MapClaims, h map[string]any) {
				h["x5t#S256"] = base64.RawURLEncoding.EncodeToString(make([]byte, 20))
			}))
		}, 401, 700027, "not registered"},
		{"bad signature", "", func() url.Values { return e.form(wrongSig) }, 401, 700027, "signature validation"},
		{"ES256", "", func() url.Values { return e.form(es256) }, 401, 5002738, "'ES256' is not a supported"},
		{"wrong aud", "", func() url.Values {
			return e.form(e.assertion(t, set("aud", "https://login.microsoftonline.com/"+e.srv.Tenant()+"/oauth2/v2.0/token")))
		}, 401, 50012, "audience"},
		{"aud as array", "", func() url.Values { return e.form(e.assertion(t, set("aud", []string{e.srv.TokenEndpoint()}))) }, 401, 50012, "audience"},
		{"sub != iss", "", func() url.Values { return e.form(e.assertion(t, set("sub", "someone"))) }, 401, 50048, "Subject mismatches"},
		{"iss != client_id", "", func() url.Values {
			return e.form(e.assertion(t, func(c jwt.MapClaims, _ map[string]any) { c["iss"], c["sub"] = "x", "x" }))
		}, 401, 700021, "client_id"},
		{"no exp", "", func() url.Values { return e.form(e.assertion(t, set("exp", nil))) }, 401, 50027, "'exp'"},
		{"no jti", "", func() url.Values { return e.form(e.assertion(t, set("jti", nil))) }, 401, 50027, "'jti'"},
		{"lifetime 11 min", "", func() url.Values { return e.form(e.assertion(t, set("exp", e.now.Add(11*time.Minute).Unix()))) }, 401, 700024, "10 minutes"},
		{"expired", "", func() url.Values {
			return e.form(e.assertion(t, func(c jwt.MapClaims, _ map[string]any) {
				c["nbf"], c["exp"] = e.now.Add(-20*time.Minute).Unix(), e.now.Add(-15*time.Minute).Unix()
			}))
		}, 401, 700024, "not within its valid time range"},
		{"not yet valid", "", func() url.Values {
			return e.form(e.assertion(t, func(c jwt.MapClaims, _ map[string]any) {
				c["nbf"], c["exp"] = e.now.Add(20*time.Minute).Unix(), e.now.Add(25*time.Minute).Unix()
			}))
		}, 401, 700024, "not within its valid time range"},
	}
	for _, c := range cases {
		tenant := c.tenant
		if tenant == "" {
			tenant = e.srv.Tenant()
		}
		a := e.post(t, tenant, c.form())
		desc, _ := a.body["error_description"].(string)
		if a.status != c.status || a.code() != c.code || !strings.Contains(desc, c.text) {
			t.Errorf("%s: %d AADSTS%d %q", c.name, a.status, a.code(), desc)
			continue
		}
		if !strings.HasPrefix(desc, "AADSTS") || !strings.Contains(desc, "\r\nTrace ID: ") || a.body["trace_id"] == nil || a.body["correlation_id"] == nil || a.body["error_uri"] == nil || a.body["timestamp"] == nil || a.body["error"] == "" {
			t.Errorf("%s: not Entra-shaped: %v", c.name, a.body)
		}
	}
	for _, r := range e.srv.Requests() {
		if r.Outcome == "ok" {
			t.Errorf("a bad request was accepted: %+v", r)
		}
	}
}

func TestReplayedAssertionRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.assertion(t, nil)
	if r := e.post(t, e.srv.Tenant(), e.form(a)); r.status != 200 {
		t.Fatalf("%v", r.body)
	}
	if r := e.post(t, e.srv.Tenant(), e.form(a)); r.status != 401 || r.code() != 50027 {
		t.Fatalf("replay: %d %v", r.status, r.body)
	}
}

func TestCertificateRotationAndOutage(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if err := e.srv.RemoveCert(clientID, e.cert); err != nil {
		t.Fatal(err)
	}
	if r := e.post(t, e.srv.Tenant(), e.form(e.assertion(t, nil))); r.code() != 700027 {
		t.Fatalf("removed cert accepted: %v", r.body)
	}
	if err := e.srv.RegisterCert(clientID, e.cert); err != nil {
		t.Fatal(err)
	}
	if r := e.post(t, e.srv.Tenant(), e.form(e.assertion(t, nil))); r.status != 200 {
		t.Fatalf("%v", r.body)
	}
	e.srv.SetOutage(503)
	if r := e.post(t, e.srv.Tenant(), e.form(e.assertion(t, nil))); r.status != 503 || r.body["error"] != "temporarily_unavailable" {
		t.Fatalf("outage: %d %v", r.status, r.body)
	}
	e.srv.SetOutage(OutageDrop)
	req, err := http.NewRequest(http.MethodPost, e.srv.TokenEndpoint(), strings.NewReader("x=1"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if resp, err := e.client.Do(req); err == nil {
		_ = resp.Body.Close()
		t.Fatal("dropped connection answered")
	}
	if n := e.srv.TokenRequests(); n != 4 {
		t.Fatalf("TokenRequests %d, want 4", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := e.srv.WaitTokenRequests(ctx, 4); err != nil {
		t.Fatal(err)
	}
}

func TestOpenIDConfiguration(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	resp, err := e.client.Get(e.srv.URL() + e.srv.Tenant() + "/v2.0/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	err = json.NewDecoder(resp.Body).Decode(&m)
	if cerr := resp.Body.Close(); cerr != nil {
		t.Fatal(cerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	iss, _ := m["issuer"].(string)
	if m["token_endpoint"] != e.srv.TokenEndpoint() || !strings.HasPrefix(iss, strings.TrimSuffix(e.srv.URL(), "/")) || m["authorization_endpoint"] == nil {
		t.Fatalf("%v", m)
	}
	resp, err = e.client.Get(e.srv.URL() + "other/v2.0/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	if err := resp.Body.Close(); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 400 {
		t.Fatalf("unknown tenant config: %d", resp.StatusCode)
	}
}
