package config

import (
	"strings"
	"testing"
)

const miResourceID = "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/mail/providers/Microsoft.ManagedIdentity/userAssignedIdentities/o365relay"

// The credential setting against the credential settings present: every
// conflict is an error naming both keys (as the user set them) and the fix;
// the valid combinations load and give the kind in use.
func TestCredentialKindTable(t *testing.T) {
	cert := writeFile(t, "not parsed by Load") // any readable file
	cases := []struct {
		name    string
		file    string
		env     []string
		flags   map[string]string
		kind    string   // want Credential() when the load succeeds
		want    []string // substrings of the load error; nil: no error
		daemon  []string // substrings of the CheckDaemon error; nil: none
		warning string
	}{
		// Inference, unchanged: a managed identity is never inferred.
		{name: "inferred certificate", env: []string{"AZURE_CLIENT_CERTIFICATE_PATH=" + cert}, kind: CredCertificate},
		{name: "inferred secret", env: []string{"AZURE_CLIENT_SECRET=s3cret"}, kind: CredSecret},
		{name: "nothing set infers nothing", kind: "", daemon: []string{"no credential is set", "O365RELAY_CREDENTIAL=managed_identity"}},
		{name: "client ID alone is not a managed identity", env: []string{"AZURE_CLIENT_ID=11111111-2222-3333-4444-555555555555"}, kind: "", daemon: []string{"no credential is set"}},

		// Managed identity, valid forms.
		{name: "system-assigned", env: []string{"O365RELAY_CREDENTIAL=managed_identity"}, kind: CredManagedIdentity},
		{name: "user-assigned by client ID", env: []string{"O365RELAY_CREDENTIAL=managed_identity", "AZURE_CLIENT_ID=11111111-2222-3333-4444-555555555555"}, kind: CredManagedIdentity},
		{name: "user-assigned by resource ID", env: []string{"O365RELAY_CREDENTIAL=managed_identity", "O365RELAY_MANAGED_IDENTITY_RESOURCE_ID=" + miResourceID}, kind: CredManagedIdentity},
		{name: "in the file, spelled with a dash", file: "credential: managed-identity\n", kind: CredManagedIdentity},
		{name: "flag", flags: map[string]string{"credential": "managed_identity"}, kind: CredManagedIdentity},
		{name: "authority ignored", env: []string{"O365RELAY_CREDENTIAL=managed_identity", "AZURE_AUTHORITY_HOST=https://login.microsoftonline.us/"}, kind: CredManagedIdentity, warning: "authority_host does not apply"},

		// Managed identity with key material: both keys named.
		{name: "mi + certificate", env: []string{"O365RELAY_CREDENTIAL=managed_identity", "AZURE_CLIENT_CERTIFICATE_PATH=" + cert},
			want: []string{"O365RELAY_CREDENTIAL: is managed_identity, but AZURE_CLIENT_CERTIFICATE_PATH is also set", "set credential to certificate"}},
		{name: "mi + secret", env: []string{"O365RELAY_CREDENTIAL=managed_identity", "AZURE_CLIENT_SECRET=s3cret"},
			want: []string{"O365RELAY_CREDENTIAL", "AZURE_CLIENT_SECRET is also set"}},
		{name: "mi + federated", env: []string{"O365RELAY_CREDENTIAL=managed_identity", "AZURE_FEDERATED_TOKEN_FILE=" + cert},
			want: []string{"O365RELAY_CREDENTIAL", "AZURE_FEDERATED_TOKEN_FILE is also set"}},
		{name: "mi in file + certificate flag", file: "credential: managed_identity\n", flags: map[string]string{"client_certificate_path": cert},
			want: []string{"credential (config file)", "--client-certificate-path is also set"}},
		{name: "mi + all three", env: []string{"O365RELAY_CREDENTIAL=managed_identity", "AZURE_CLIENT_CERTIFICATE_PATH=" + cert, "AZURE_CLIENT_SECRET=s3cret", "AZURE_FEDERATED_TOKEN_FILE=" + cert},
			want: []string{"AZURE_CLIENT_CERTIFICATE_PATH is also set", "AZURE_CLIENT_SECRET is also set", "AZURE_FEDERATED_TOKEN_FILE is also set"}},
		{name: "client ID and resource ID", env: []string{"O365RELAY_CREDENTIAL=managed_identity", "AZURE_CLIENT_ID=11111111-2222-3333-4444-555555555555", "O365RELAY_MANAGED_IDENTITY_RESOURCE_ID=" + miResourceID},
			want: []string{"O365RELAY_MANAGED_IDENTITY_RESOURCE_ID", "AZURE_CLIENT_ID both select"}},
		{name: "resource ID without managed identity", env: []string{"AZURE_CLIENT_CERTIFICATE_PATH=" + cert, "O365RELAY_MANAGED_IDENTITY_RESOURCE_ID=" + miResourceID},
			want: []string{"O365RELAY_MANAGED_IDENTITY_RESOURCE_ID", "only applies to a managed identity"}},
		{name: "GUID as resource ID", env: []string{"O365RELAY_CREDENTIAL=managed_identity", "O365RELAY_MANAGED_IDENTITY_RESOURCE_ID=11111111-2222-3333-4444-555555555555"},
			want: []string{"O365RELAY_MANAGED_IDENTITY_RESOURCE_ID", "put it in AZURE_CLIENT_ID"}},

		// Other named kinds.
		{name: "named certificate", env: []string{"O365RELAY_CREDENTIAL=certificate", "AZURE_CLIENT_CERTIFICATE_PATH=" + cert}, kind: CredCertificate},
		{name: "named certificate, secret set", env: []string{"O365RELAY_CREDENTIAL=certificate", "AZURE_CLIENT_SECRET=s3cret"},
			want: []string{"O365RELAY_CREDENTIAL: is certificate, but AZURE_CLIENT_SECRET is set", "set credential to secret"}},
		{name: "named secret, missing", env: []string{"O365RELAY_CREDENTIAL=secret"}, kind: CredSecret,
			daemon: []string{"AZURE_CLIENT_SECRET: not set, but O365RELAY_CREDENTIAL is secret"}},
		{name: "named federated, missing", env: []string{"O365RELAY_CREDENTIAL=federated"}, kind: CredFederated,
			daemon: []string{"AZURE_FEDERATED_TOKEN_FILE: not set"}},
		{name: "unknown kind", env: []string{"O365RELAY_CREDENTIAL=msi"},
			want: []string{"O365RELAY_CREDENTIAL", `"msi" is not one of certificate, secret, federated, managed_identity`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := Input{Env: tc.env, Flags: tc.flags}
			if tc.file != "" {
				in.File = writeFile(t, tc.file)
			}
			c, err := Load(in)
			if tc.want != nil {
				if err == nil {
					t.Fatalf("Load succeeded with kind %q; want an error with %q", c.Credential(), tc.want)
				}
				for _, w := range tc.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error lacks %q:\n%v", w, err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Credential(); got != tc.kind {
				t.Errorf("Credential() = %q, want %q", got, tc.kind)
			}
			if tc.warning != "" && !strings.Contains(strings.Join(c.Warnings, "\n"), tc.warning) {
				t.Errorf("warnings %q lack %q", c.Warnings, tc.warning)
			}
			c.Mailbox = "relay@contoso.example"
			derr := c.CheckDaemon()
			if tc.daemon == nil {
				// A managed identity needs neither tenant nor client ID.
				if derr != nil && (tc.kind == CredManagedIdentity || !strings.Contains(derr.Error(), "AZURE_TENANT_ID")) {
					t.Errorf("CheckDaemon: %v", derr)
				}
				return
			}
			if derr == nil {
				t.Fatalf("CheckDaemon passed; want %q", tc.daemon)
			}
			for _, w := range tc.daemon {
				if !strings.Contains(derr.Error(), w) {
					t.Errorf("CheckDaemon error lacks %q:\n%v", w, derr)
				}
			}
		})
	}
}
