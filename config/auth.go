package config

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	"golang.org/x/crypto/bcrypt"

	"github.com/o365relay/o365relay/config/secret"
)

// Listener TLS and local AUTH, for a relay that listens beyond loopback
// (a central relay in a cluster).
//
// listen_tls_cert and listen_tls_key enable STARTTLS on listen; listen_tls
// adds an implicit-TLS port (RFC 8314, e.g. :465). auth_users (config file
// only) are the local AUTH accounts:
//
//	auth_users:
//	  - user: billing-app
//	    password_bcrypt: "$2y$12$..."   # htpasswd -nBC 12 billing-app
//	    senders: [billing@contoso.com, "*@billing.contoso.com"]
//
// AUTH is offered only over TLS, so auth_users without listen_tls_cert is a
// start-up error. With auth_users, allowed_networks means "may relay
// without AUTH": any other address may connect and must AUTH before MAIL
// FROM (530 5.7.0); an empty allowed_networks requires AUTH of everyone.
// There is no separate auth_required switch: one list says who is trusted
// without credentials, and a second switch could only contradict it.

// AuthUser is one item of the file's auth_users list.
type AuthUser struct {
	User string
	// PasswordBcrypt is the bcrypt hash; a Secret so that no formatting
	// path prints it (a hash can be cracked offline).
	PasswordBcrypt secret.Secret
	// Senders: exact addresses, "*@domain" or "*".
	Senders []string
	Line    int
}

// authUsersKey is the file-only key of the AUTH accounts.
const authUsersKey = "auth_users"

// authFileOnly documents auth_users for the reference table.
func authFileOnly() []FileOnlySetting {
	return []FileOnlySetting{{authUsersKey, "List of local AUTH accounts (PLAIN, LOGIN; offered only over TLS, so listen_tls_cert is required): `user`, `password_bcrypt` (a bcrypt hash, e.g. from `htpasswd -nBC 12 USER`), `senders` (addresses, `*@domain` or `*`; others get 550 5.7.1). When set, a client outside allowed_networks must AUTH before MAIL FROM (530 5.7.0). See Listening beyond loopback."}}
}

// authUsersValue parses auth_users into a fileValue whose setter stores
// the accounts (the list is not a scalar Setting).
func authUsersValue(path string, k, v *yaml.Node) (fileValue, []error) {
	e := &nodeErrs{path: path, key: authUsersKey}
	users := parseAuthUsers(v, e)
	s := Setting{Key: authUsersKey, accessor: accessor{
		set: func(c *Config, _ string) error { c.AuthUsers = users; return nil },
		get: func(c *Config) string { return authUsersSummary(c.AuthUsers) },
	}}
	return fileValue{setting: s, line: k.Line}, e.errs
}

// parseAuthUsers reads the auth_users list: complete accounts only, each
// user once.
func parseAuthUsers(v *yaml.Node, e *nodeErrs) []AuthUser {
	if v.Kind != yaml.SequenceNode {
		e.bad(v, "expected a list of accounts (- user: NAME, password_bcrypt: HASH, senders: [ADDRESS]), found %s", kindName(v))
		return nil
	}
	var users []AuthUser
	seen := map[string]int{}
	for _, it := range v.Content {
		if it.Kind != yaml.MappingNode {
			e.bad(it, "each account must be a mapping with user, password_bcrypt and senders, found %s", kindName(it))
			continue
		}
		u := parseAuthUser(it, e)
		switch {
		case u.User == "":
			e.bad(it, "account without user; add user: NAME")
			continue
		case u.PasswordBcrypt.IsZero():
			e.bad(it, "account %s has no password_bcrypt", u.User)
			continue
		case len(u.Senders) == 0:
			e.bad(it, "account %s has no senders; list the addresses it may send as (or \"*\")", u.User)
			continue
		}
		if first, dup := seen[u.User]; dup {
			e.bad(it, "account %s is already on line %d", u.User, first)
			continue
		}
		seen[u.User] = it.Line
		users = append(users, u)
	}
	return users
}

// parseAuthUser reads the fields of one account (a mapping); the caller
// checks that it is complete.
func parseAuthUser(it *yaml.Node, e *nodeErrs) AuthUser {
	u := AuthUser{Line: it.Line}
	for i := 0; i+1 < len(it.Content); i += 2 {
		fk, fv := it.Content[i], it.Content[i+1]
		switch fk.Value {
		case "user":
			if fv.Kind != yaml.ScalarNode || fv.Value == "" || strings.ContainsAny(fv.Value, "\x00\r\n") {
				e.bad(fk, "user must be a non-empty name without NUL or line breaks")
				continue
			}
			u.User = fv.Value
		case "password_bcrypt":
			if fv.Kind != yaml.ScalarNode {
				e.bad(fk, "password_bcrypt must be a single value")
				continue
			}
			if _, err := bcrypt.Cost([]byte(fv.Value)); err != nil {
				// The reason, never the value.
				e.bad(fk, "password_bcrypt is not a bcrypt hash (%v); make one with htpasswd -nBC 12 USER (the part after the colon), or python3 -c 'import bcrypt; print(bcrypt.hashpw(b\"PASSWORD\", bcrypt.gensalt(12)).decode())'", err)
				continue
			}
			u.PasswordBcrypt = secret.Secret(fv.Value)
		case "senders":
			u.Senders = append(u.Senders, parseAuthSenders(fv, e)...)
		default:
			e.bad(fk, "unknown field %q in an account (user, password_bcrypt, senders)", fk.Value)
		}
	}
	return u
}

// parseAuthSenders reads an account's senders: one pattern or a list.
func parseAuthSenders(fv *yaml.Node, e *nodeErrs) []string {
	items := []*yaml.Node{fv}
	if fv.Kind == yaml.SequenceNode {
		items = fv.Content
	}
	var out []string
	for _, s := range items {
		if s.Kind != yaml.ScalarNode {
			e.bad(s, "senders must be addresses, \"*@domain\" or \"*\"")
			continue
		}
		p, err := parseSenderPattern(s.Value)
		if err != nil {
			e.bad(s, "%v", err)
			continue
		}
		out = append(out, p)
	}
	return out
}

func authUsersSummary(users []AuthUser) string {
	var out []string
	for _, u := range users {
		out = append(out, u.User+"→"+strings.Join(u.Senders, "+"))
	}
	return strings.Join(out, ",")
}

// checkListener makes the cross-setting checks of the listener's
// exposure, TLS and AUTH (docs/design.md#configuration-errors-name-the-key-and-the-fix: each names its key and the fix).
func (c *Config) checkListener() []error {
	var errs []error
	tlsOn := c.ListenTLSCert != "" && c.ListenTLSKey != ""
	switch {
	case c.ListenTLSCert != "" && c.ListenTLSKey == "":
		errs = append(errs, c.errf("listen_tls_key", "is not set but listen_tls_cert is; set it to the PEM file with the certificate's private key"))
	case c.ListenTLSKey != "" && c.ListenTLSCert == "":
		errs = append(errs, c.errf("listen_tls_cert", "is not set but listen_tls_key is; set it to the PEM file with the certificate (and its chain)"))
	case tlsOn:
		errs = append(errs, c.checkListenerCert()...)
	}
	if c.ListenTLS != "" && !tlsOn {
		errs = append(errs, c.errf("listen_tls", "%s needs a certificate: set listen_tls_cert and listen_tls_key (O365RELAY_LISTEN_TLS_CERT, O365RELAY_LISTEN_TLS_KEY), or leave listen_tls empty", c.ListenTLS))
	}
	if c.ListenTLS != "" && c.ListenTLS == c.Listen {
		errs = append(errs, c.errf("listen_tls", "%s is also listen; give the implicit-TLS port its own address (e.g. :465)", c.ListenTLS))
	}
	if len(c.AuthUsers) > 0 && !tlsOn {
		errs = append(errs, c.errf(authUsersKey, "AUTH is offered only over TLS (passwords must not cross the network in clear); set listen_tls_cert and listen_tls_key (O365RELAY_LISTEN_TLS_CERT, O365RELAY_LISTEN_TLS_KEY)"))
	}
	for _, u := range c.AuthUsers {
		if cost, err := bcrypt.Cost([]byte(u.PasswordBcrypt.Reveal())); err == nil && cost < bcrypt.DefaultCost {
			c.Warnings = append(c.Warnings, fmt.Sprintf("auth_users: the hash of %s has bcrypt cost %d; use at least %d (htpasswd -nBC 12)", u.User, cost, bcrypt.DefaultCost))
		}
	}
	protected := tlsOn && len(c.AuthUsers) > 0
	for _, key := range []string{"listen", "listen_tls"} {
		addr := c.Listen
		if key == "listen_tls" {
			addr = c.ListenTLS
		}
		if addr == "" {
			continue
		}
		host, _, _ := net.SplitHostPort(addr)
		if isLoopbackHost(host) || c.Sources["allowed_networks"] != FromDefault || protected {
			continue
		}
		// Whoever reaches the port sends as the mailbox. Loopback by
		// default is safe; anything wider must be a decision someone
		// wrote down (docs/design.md#who-may-relay: an empty list meaning
		// "everyone" is decke/smtprelay's trap), or every client must
		// authenticate.
		errs = append(errs, c.errf(key, "%s is not a loopback address and the relay does not authenticate SMTP clients; also set allowed_networks (O365RELAY_ALLOWED_NETWORKS) to the networks of the clients that may relay, e.g. 10.244.0.0/16, or make clients authenticate: listen_tls_cert, listen_tls_key and auth_users (README, Listening beyond loopback)", addr))
	}
	return errs
}

// checkListenerCert loads the listener's certificate and key as the
// daemon will, so a key that does not match stops it at start.
func (c *Config) checkListenerCert() []error {
	certPEM, err := os.ReadFile(c.ListenTLSCert)
	if err != nil {
		return []error{c.errf("listen_tls_cert", "cannot read %s: %v", c.ListenTLSCert, err)}
	}
	var leaf *x509.Certificate
	for rest := certPEM; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			if leaf, err = x509.ParseCertificate(b.Bytes); err != nil {
				return []error{c.errf("listen_tls_cert", "%s: the first certificate does not parse: %v", c.ListenTLSCert, err)}
			}
			break
		}
	}
	if leaf == nil {
		return []error{c.errf("listen_tls_cert", "%s holds no PEM CERTIFICATE block; give the server certificate (leaf first, then its chain)", c.ListenTLSCert)}
	}
	keyPEM, err := os.ReadFile(c.ListenTLSKey)
	if err != nil {
		return []error{c.errf("listen_tls_key", "cannot read %s: %v", c.ListenTLSKey, err)}
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		// crypto/tls errors name the mismatch or the parse failure,
		// never key material.
		return []error{c.errf("listen_tls_key", "%s does not go with listen_tls_cert %s (%v); give the private key of that certificate, PEM-encoded", c.ListenTLSKey, c.ListenTLSCert, err)}
	}
	if time.Now().After(leaf.NotAfter) {
		c.Warnings = append(c.Warnings, fmt.Sprintf("listen_tls_cert %s expired on %s; clients that verify it will refuse STARTTLS", c.ListenTLSCert, leaf.NotAfter.Format(time.DateOnly)))
	}
	if fi, err := os.Stat(c.ListenTLSKey); err == nil && fi.Mode().Perm()&0o004 != 0 {
		c.Warnings = append(c.Warnings, fmt.Sprintf("listen_tls_key %s is world-readable (%s); chmod 600 it (or 0440 with a dedicated group)", c.ListenTLSKey, fi.Mode().Perm()))
	}
	return nil
}
