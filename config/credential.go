package config

import (
	"fmt"
	"strings"
)

// Credential kinds: the values of the credential setting and of
// Config.Credential.
//
// Without the setting the kind is inferred from which credential setting is
// present, as before the setting existed. A managed identity is never
// inferred: it has no setting of its own to be present, and on an Azure VM
// a relay configured with a certificate must not quietly start
// authenticating as the VM instead (docs/managed-identity.md).
const (
	CredCertificate     = "certificate"
	CredSecret          = "secret"
	CredFederated       = "federated"
	CredManagedIdentity = "managed_identity"
)

var credKinds = []string{CredCertificate, CredSecret, CredFederated, CredManagedIdentity}

func parseCredentialKind(v string) (string, error) {
	if v == "" {
		return "", nil
	}
	norm := strings.ReplaceAll(strings.TrimSpace(v), "-", "_")
	for _, k := range credKinds {
		if strings.EqualFold(norm, k) {
			return k, nil
		}
	}
	return "", fmt.Errorf("%q is not one of %s (or empty: the kind whose setting is present)", v, strings.Join(credKinds, ", "))
}

// parseResourceID accepts an Azure Resource Manager ID of a user-assigned
// identity. A GUID here is almost always a client ID in the wrong place.
func parseResourceID(v string) (string, error) {
	if v == "" {
		return "", nil
	}
	if strings.ContainsAny(v, " \t\r\n?#&=") || !strings.HasPrefix(strings.ToLower(v), "/subscriptions/") ||
		!strings.Contains(strings.ToLower(v), "/providers/microsoft.managedidentity/userassignedidentities/") {
		hint := ""
		if isGUIDLike(v) {
			hint = "; a GUID is the identity's client ID: put it in AZURE_CLIENT_ID instead"
		}
		return "", fmt.Errorf("%q is not the resource ID of a user-assigned identity (/subscriptions/SUB/resourceGroups/GROUP/providers/Microsoft.ManagedIdentity/userAssignedIdentities/NAME, on the identity's Properties page)%s", v, hint)
	}
	return v, nil
}

func isGUIDLike(s string) bool {
	return len(s) == 36 && strings.Count(s, "-") == 4
}

// credentialKeyKind is the kind a credential setting belongs to.
func credentialKeyKind(key string) string {
	switch key {
	case "client_certificate_path":
		return CredCertificate
	case "federated_token_file":
		return CredFederated
	case "client_secret":
		return CredSecret
	}
	return ""
}

// checkCredentialKind makes Load's checks of the credential setting against
// the credential settings present: each conflict names both keys.
func (c *Config) checkCredentialKind() []error {
	var errs []error
	kind := c.CredentialKind
	if kind != "" {
		for _, k := range c.credentialKeys() {
			other := credentialKeyKind(k)
			switch {
			case other == kind:
			case kind == CredManagedIdentity:
				errs = append(errs, c.errf("credential", "is managed_identity, but %s is also set; a managed identity needs no key material: remove %s, or set credential to %s", c.where(k), c.where(k), other))
			default:
				errs = append(errs, c.errf("credential", "is %s, but %s is set; remove %s, or set credential to %s", kind, c.where(k), c.where(k), other))
			}
		}
	}
	if c.ManagedIdentityResourceID != "" {
		switch {
		case c.Credential() != CredManagedIdentity:
			errs = append(errs, c.errf("managed_identity_resource_id", "only applies to a managed identity; set credential to managed_identity (O365RELAY_CREDENTIAL=managed_identity) or remove it"))
		case c.ClientID != "":
			errs = append(errs, c.errf("managed_identity_resource_id", "and %s both select a user-assigned identity; set only one of them (the client ID, or the resource ID)", c.where("client_id")))
		}
	}
	if kind == CredManagedIdentity {
		if c.Sources["authority_host"] != FromDefault {
			c.Warnings = append(c.Warnings, "authority_host does not apply to a managed identity (the platform's endpoint gets the token); ignored")
		}
		if c.Sources["assertion_algorithm"] != FromDefault {
			c.Warnings = append(c.Warnings, "assertion_algorithm does not apply to a managed identity; ignored")
		}
	}
	return errs
}

// checkNamedCredential is CheckDaemon's part: a kind named in the credential
// setting needs its own setting.
func (c *Config) checkNamedCredential() []error {
	need := map[string]struct{ key, env, what string }{
		CredCertificate: {"client_certificate_path", "AZURE_CLIENT_CERTIFICATE_PATH", "the PEM or PFX whose certificate is uploaded to the app registration"},
		CredSecret:      {"client_secret", "AZURE_CLIENT_SECRET", "the client secret's Value (Certificates & secrets)"},
		CredFederated:   {"federated_token_file", "AZURE_FEDERATED_TOKEN_FILE", "the projected service-account token file"},
	}[c.CredentialKind]
	if need.key == "" {
		return nil
	}
	for _, k := range c.credentialKeys() {
		if k == need.key {
			return nil
		}
	}
	return []error{&Error{Key: need.key, Where: need.env, Reason: fmt.Sprintf("not set, but %s is %s; set it to %s, or change %s", c.where("credential"), c.CredentialKind, need.what, c.where("credential"))}}
}

// credentialKeys lists the credential settings that are set.
func (c *Config) credentialKeys() []string {
	var ks []string
	if c.CertificatePath != "" {
		ks = append(ks, "client_certificate_path")
	}
	if c.FederatedTokenFile != "" {
		ks = append(ks, "federated_token_file")
	}
	if !c.ClientSecret.IsZero() {
		ks = append(ks, "client_secret")
	}
	return ks
}

// Credential names the credential in use: "certificate", "federated",
// "secret", "managed_identity", or "" when none is set. The credential
// setting wins; without it the kind is the one whose setting is present,
// never a managed identity (see the Cred* constants above).
func (c *Config) Credential() string {
	if c.CredentialKind != "" {
		return c.CredentialKind
	}
	switch {
	case c.CertificatePath != "":
		return "certificate"
	case c.FederatedTokenFile != "":
		return "federated"
	case !c.ClientSecret.IsZero():
		return "secret"
	}
	return ""
}
