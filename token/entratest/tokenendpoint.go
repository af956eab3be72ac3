package entratest

import (
	"crypto/subtle"
	"crypto/x509"
	"fmt"
	"net/http"
	"strings"
	"time"
)

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
