package entratest

import "net/http"

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
