package token

import (
	"strings"
	"testing"
)

// Fix fills in the user's IDs for every code Explain maps to a setup step,
// so the doctor never prints a fix with a placeholder it could have filled.
func TestFixFillsIDs(t *testing.T) {
	t.Parallel()
	ids := SetupIDs{TenantID: "tenant-x", ClientID: "client-y", AuthorityHost: "https://login.example/", Thumbprint: "ABCDEF", CertificatePath: "/etc/o365relay/app.pem"}
	for code, e := range explanations {
		if e.step == 0 {
			continue
		}
		fix := Fix(code, ids)
		if fix == "" {
			t.Errorf("AADSTS%d (step %d) has no fix", code, e.step)
		}
		if strings.Contains(fix, "<thumbprint>") || strings.Contains(fix, "<certificate file>") {
			t.Errorf("AADSTS%d: placeholder left in %q", code, fix)
		}
	}
	for code, want := range map[int][]string{
		700016:  {"client-y", "tenant-x", "AZURE_CLIENT_ID", "AZURE_TENANT_ID"},
		90002:   {"tenant-x", "https://login.example/"},
		700027:  {"thumbprint ABCDEF", "client-y", "/etc/o365relay/app.pem", "wait 2 minutes after uploading"},
		7000215: {"Value", "Secret ID"},
		70021:   {"system:serviceaccount:<namespace>:<service account>", "api://AzureADTokenExchange"},
	} {
		fix := Fix(code, ids)
		for _, w := range want {
			if !strings.Contains(fix, w) {
				t.Errorf("AADSTS%d fix lacks %q: %s", code, w, fix)
			}
		}
	}
	if Fix(1, ids) != "" {
		t.Error("a fix for an unknown code")
	}
}
