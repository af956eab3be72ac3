package mitest

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/o365relay/o365relay/token/entratest"
)

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
