package token

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	msalerrors "github.com/AzureAD/microsoft-authentication-library-for-go/apps/errors"
)

// A managed-identity endpoint's answer reaches the log and the doctor only
// through explainManagedIdentity. Whatever the endpoint sends back (App
// Service's and IMDS's error shapes, an echoed token), the explanation is
// one short line, never carries a JWT, and never panics.
func FuzzExplainManagedIdentity(f *testing.F) {
	f.Add(400, `{"error":"invalid_request","error_description":"Identity not found"}`)
	f.Add(400, `{"statusCode":400,"message":"Unable to load the proper Managed Identity."}`)
	f.Add(500, `{"error":{"code":"x","message":"eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJ4In0.c2ln"}}`)
	f.Add(400, `{"error":"invalid_resource","error_description":"AADSTS500011: The resource principal named x was not found"}`)
	f.Add(429, "Too many requests")
	f.Fuzz(func(t *testing.T, status int, body string) {
		err := msalerrors.CallErr{
			Req:  &http.Request{},
			Resp: &http.Response{StatusCode: status},
			Err:  fmt.Errorf("http call(http://169.254.169.254/metadata/identity/oauth2/token)(GET) error: reply status code was %d:\n%s", status, body),
		}
		ee := explainManagedIdentity(err, "IMDS (Azure VM)", "http://169.254.169.254/metadata/identity/oauth2/token", ManagedIdentity{})
		out := ee.Error()
		if jwtLike.MatchString(out) {
			t.Fatalf("a JWT in the explanation: %q", out)
		}
		if strings.ContainsAny(out, "\r\n") {
			t.Fatalf("explanation is not one line: %q", out)
		}
	})
}
