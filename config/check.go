package config

import (
	"errors"
	"fmt"
	"strings"

	"github.com/o365relay/o365relay/config/azurestep"
)

// Cross-setting checks: what Load checks once every value has parsed, and
// what the daemon (but not the queue or healthcheck commands) needs on top.

// where returns how the user set key, for error messages.
func (c *Config) where(key string) string {
	s, _ := lookup(key)
	switch c.Sources[key] {
	case FromFlag:
		return "--" + s.Flag()
	case FromEnv:
		return s.Env
	case FromFile:
		return key + " (config file)"
	}
	return key + " (default)"
}

func (c *Config) errf(key, format string, args ...any) error {
	return &Error{Key: key, Where: c.where(key), Reason: fmt.Sprintf(format, args...)}
}

// check makes the cross-setting checks.
func (c *Config) check() []error {
	var errs []error
	// A non-loopback listener needs allowed_networks or TLS and AUTH.
	errs = append(errs, c.checkListener()...)
	if c.RetryMax < c.RetryMin {
		errs = append(errs, c.errf("retry_max", "%s is shorter than retry_min (%s); make it at least as long", c.RetryMax, c.RetryMin))
	}
	if len(c.AllowedNetworks) == 0 && len(c.AuthUsers) == 0 {
		c.Warnings = append(c.Warnings, "allowed_networks is empty: every client connection will be refused")
	}
	if !c.CertificatePassword.IsZero() && c.CertificatePath == "" {
		errs = append(errs, c.errf("client_certificate_password", "is set but client_certificate_path (AZURE_CLIENT_CERTIFICATE_PATH) is not; set the certificate's path or remove the password"))
	}
	if creds := c.credentialKeys(); len(creds) > 1 && c.CredentialKind == "" {
		var names []string
		for _, k := range creds {
			names = append(names, c.where(k))
		}
		errs = append(errs, c.errf(creds[0], "more than one credential is set (%s); set exactly one: a certificate (recommended), a federated token file, or a client secret", strings.Join(names, ", ")))
	}
	if c.AssertionAlgorithm != "PS256" && c.CertificatePath == "" && c.Sources["assertion_algorithm"] != FromDefault {
		c.Warnings = append(c.Warnings, "assertion_algorithm only applies to a certificate credential; ignored")
	}
	errs = append(errs, c.checkCredentialKind()...)
	return errs
}

// CheckDaemon reports what the daemon needs beyond what Load checks: an
// identity and a mailbox. Other commands (queue, healthcheck) do not need them.
func (c *Config) CheckDaemon() error {
	var errs []error
	mi := c.Credential() == CredManagedIdentity
	if c.TenantID == "" && !mi {
		errs = append(errs, &Error{Key: "tenant_id", Where: "AZURE_TENANT_ID", Reason: "not set; use the Directory (tenant) ID from the app registration's Overview page (" + azurestep.RegisterApp.Named() + ")"})
	}
	if c.ClientID == "" && !mi {
		errs = append(errs, &Error{Key: "client_id", Where: "AZURE_CLIENT_ID", Reason: "not set; use the Application (client) ID from the app registration's Overview page (" + azurestep.RegisterApp.Named() + ")"})
	}
	needDefault := len(c.Senders) == 0
	for _, r := range c.Senders {
		if r.Mailbox == "" {
			needDefault = true
		}
	}
	if c.Mailbox == "" && needDefault {
		errs = append(errs, &Error{Key: "mailbox", Where: "O365RELAY_MAILBOX", Reason: "not set; name the mailbox the relay authenticates as (XOAUTH2 user=), the one granted with Add-MailboxPermission (" + azurestep.AddMailboxPermission.String() + ")"})
	}
	if c.Credential() == "" {
		errs = append(errs, &Error{Key: "client_certificate_path", Where: "AZURE_CLIENT_CERTIFICATE_PATH",
			Reason: "no credential is set; set AZURE_CLIENT_CERTIFICATE_PATH to the PEM or PFX whose certificate is uploaded to the app registration (or AZURE_FEDERATED_TOKEN_FILE, or AZURE_CLIENT_SECRET; on Azure or an Arc-enabled server, O365RELAY_CREDENTIAL=managed_identity)"})
	}
	errs = append(errs, c.checkNamedCredential()...)
	return errors.Join(errs...)
}
