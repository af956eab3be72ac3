// Package relaytest owns a fake Microsoft 365 for the whole relay: the strict
// Entra ID of token/entratest and the strict Exchange Online of
// relay/exchangetest wired together — one tenant, one app registration with a
// certificate and the SMTP.SendAsApp role, one mailbox the app holds
// FullAccess on — plus the files a relay in a child process needs (the app's
// PEM credential and a CA file for SSL_CERT_FILE).
//
// The demo command and the end-to-end tests use it, so nothing here imports
// "testing". Nothing here disables TLS verification: the relay trusts the
// throwaway CA through SSL_CERT_FILE (child processes) or an explicit pool
// (in-process), exactly as it trusts the system roots in production.
package relaytest

import (
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"

	"github.com/o365relay/o365relay/config/tlstest"
	"github.com/o365relay/o365relay/relay/exchangetest"
	"github.com/o365relay/o365relay/token/entratest"
)

// Identifiers of the fake tenant's app registration.
const (
	ClientID = "4a1f6c0e-5b7d-4e21-9c3a-0d2e8f7b6a51"
	ObjectID = "c0ffee00-1234-4abc-8def-0123456789ab"
	Mailbox  = "relay@contoso.example"
)

// Options configure a Cloud.
type Options struct {
	// Dir receives ca.pem and app.pem; required.
	Dir string
	// Discard makes the fake Exchange keep only sizes and hashes.
	Discard bool
	// Logger for the fakes; nil discards.
	Logger *zap.Logger
	// Mailboxes beyond Mailbox, each granted to the app.
	Mailboxes []string
	// Exchange, if set, may change the fake Exchange's options before it
	// starts: misconfigure a mailbox (AuthDisabled, no grant), serve a
	// certificate from another CA, or turn STARTTLS off.
	Exchange func(*exchangetest.Options)
}

// Cloud is a running fake Entra ID and Exchange Online.
type Cloud struct {
	CA       *tlstest.CA
	Entra    *entratest.Server
	Exchange *exchangetest.Server
	// CAFile is the CA in PEM, for SSL_CERT_FILE.
	CAFile string
	// CertFile is the app's credential: certificate and PKCS #1 key in PEM,
	// mode 0600.
	CertFile string
	Cert     *x509.Certificate
	Key      *rsa.PrivateKey
}

// New starts both fakes on loopback.
func New(o Options) (c *Cloud, err error) {
	if o.Dir == "" {
		return nil, errors.New("relaytest: Dir is required")
	}
	c = &Cloud{}
	defer func() {
		if err != nil {
			_ = c.Close()
		}
	}()
	if c.CA, err = tlstest.NewCA("o365relay relaytest CA"); err != nil {
		return nil, err
	}
	c.CAFile = filepath.Join(o.Dir, "ca.pem")
	if err = c.CA.WriteFile(c.CAFile); err != nil {
		return nil, err
	}
	if c.Entra, err = entratest.NewServer(entratest.Options{CA: c.CA}); err != nil {
		return nil, err
	}
	now := time.Now()
	if c.Cert, c.Key, err = tlstest.SelfSigned("o365relay relaytest app", now.Add(-time.Hour), now.Add(365*24*time.Hour)); err != nil {
		return nil, err
	}
	c.CertFile = filepath.Join(o.Dir, "app.pem")
	pemData := append(tlstest.CertPEM(c.Cert), tlstest.PKCS1PEM(c.Key)...)
	if err = os.WriteFile(c.CertFile, pemData, 0o600); err != nil {
		return nil, err
	}
	c.Entra.AddApp(entratest.App{
		ClientID: ClientID,
		ObjectID: ObjectID,
		Certs:    []*x509.Certificate{c.Cert},
		Roles:    []string{exchangetest.RoleSendAsApp},
	})
	serverCert, err := c.CA.ServerCert()
	if err != nil {
		return nil, err
	}
	mbx := map[string]exchangetest.Mailbox{Mailbox: {Apps: []string{ClientID}}}
	for _, m := range o.Mailboxes {
		mbx[m] = exchangetest.Mailbox{Apps: []string{ClientID}}
	}
	xo := exchangetest.Options{
		TLS:       serverCert,
		TokenKey:  c.Entra.PublicKey(),
		Tenant:    c.Entra.Tenant(),
		Mailboxes: mbx,
		Logger:    o.Logger,
		Discard:   o.Discard,
	}
	if o.Exchange != nil {
		o.Exchange(&xo)
	}
	c.Exchange, err = exchangetest.NewServer(xo)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Env is the environment that points a relay at this cloud: identity,
// upstream, mailbox and SSL_CERT_FILE.
func (c *Cloud) Env() []string {
	return []string{
		"AZURE_TENANT_ID=" + c.Entra.Tenant(),
		"AZURE_CLIENT_ID=" + ClientID,
		"AZURE_CLIENT_CERTIFICATE_PATH=" + c.CertFile,
		"AZURE_AUTHORITY_HOST=" + c.Entra.URL(),
		"O365RELAY_UPSTREAM=" + c.Exchange.Addr(),
		"O365RELAY_MAILBOX=" + Mailbox,
		"SSL_CERT_FILE=" + c.CAFile,
	}
}

// Settings are the same as Env, as config keys, for an in-process relay.
func (c *Cloud) Settings() map[string]string {
	return map[string]string{
		"tenant_id":               c.Entra.Tenant(),
		"client_id":               ClientID,
		"client_certificate_path": c.CertFile,
		"authority_host":          c.Entra.URL(),
		"upstream":                c.Exchange.Addr(),
		"mailbox":                 Mailbox,
	}
}

// HTTPClient trusts only the cloud's CA, for an in-process relay.
func (c *Cloud) HTTPClient() *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:     &tls.Config{RootCAs: c.CA.Pool(), MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout: 10 * time.Second,
		},
	}
}

// Close stops both fakes.
func (c *Cloud) Close() error {
	var errs []error
	if c.Exchange != nil {
		errs = append(errs, c.Exchange.Close())
	}
	if c.Entra != nil {
		errs = append(errs, c.Entra.Close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("relaytest: %w", err)
	}
	return nil
}
