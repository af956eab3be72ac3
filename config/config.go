// Package config owns the relay's settings: their names in the YAML file, in
// the environment and on the command line, their defaults, how each value is
// parsed, and the checks that stop the daemon at start when one is wrong
// (docs/design.md#configuration-errors-name-the-key-and-the-fix: the message names the key and the fix).
//
// Precedence is flags over environment over file over defaults, as
// decke/smtprelay and most container tooling do it: a Kubernetes manifest or
// a systemd EnvironmentFile can override a file baked into an image, and a
// flag typed by a person overrides everything.
//
// Layering. config is the bottom layer: it returns values (the mailbox for
// a sender, a rule's rewrite setting), never SMTP replies, and imports
// nothing under relay/ or token/. Its leaf sub-packages — secret, address,
// tlstest — are shared by every layer above (docs/architecture.md).
//
// Names. Each setting has one YAML key (lower case, e.g. allowed_networks),
// one environment variable (O365RELAY_ALLOWED_NETWORKS, or the Azure SDK's
// own AZURE_* name for the identity settings, so Azure users and the
// workload-identity webhook need nothing new) and one flag
// (--allowed-networks). The reference table in README.md is generated from
// Settings and a test keeps the two equal.
package config

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/o365relay/o365relay/config/secret"
)

// Source says where a setting's value came from.
type Source string

const (
	FromDefault Source = "default"
	FromFile    Source = "file"
	FromEnv     Source = "environment"
	FromFlag    Source = "flag"
)

// Config is the relay's effective configuration.
type Config struct {
	// Intake.
	Listen                  string
	AllowedNetworks         []netip.Prefix
	Hostname                string
	MaxMessageBytes         int64
	MaxRecipients           int
	MaxConnections          int
	MaxConnectionsPerClient int
	LineEndings             string // "reject" or "normalize"
	// Listener TLS and local AUTH (auth.go).
	ListenTLS     string // implicit-TLS address; "" = none
	ListenTLSCert string // PEM; with ListenTLSKey enables STARTTLS on Listen
	ListenTLSKey  string
	AuthUsers     []AuthUser // from the file's auth_users

	// Exchange Online.
	Upstream               string
	Mailbox                string
	MailboxConnections     int
	MailboxRate            int // messages per minute; 0 = unlimited
	MailboxDailyRecipients int // per rolling 24 h; 0 = unlimited
	// Senders are the file's sender rules (see SenderRule); empty means
	// every sender uses Mailbox.
	Senders []SenderRule
	// mailboxOverrides are the file's per-mailbox limits, by lower-case
	// address (see Limits).
	mailboxOverrides map[string]MailboxLimits

	// Spool and delivery.
	SpoolDir        string
	SpoolMaxItems   int
	SpoolMaxBytes   int64
	Ack             string // "spool" or "upstream"
	QueueLifetime   time.Duration
	RetryMin        time.Duration
	RetryMax        time.Duration
	ShutdownTimeout time.Duration

	// Operations.
	AdminListen string
	LogLevel    string
	LogFormat   string

	// Identity (Entra ID app registration, or a managed identity).
	// CredentialKind is the credential setting as given ("" = inferred);
	// Credential() is the kind in use.
	CredentialKind            string
	ManagedIdentityResourceID string
	TenantID                  string
	ClientID                  string
	Scope                     string
	AuthorityHost             string
	CertificatePath           string
	CertificatePassword       secret.Secret
	ClientSecret              secret.Secret
	FederatedTokenFile        string
	AssertionAlgorithm        string // "PS256" or "RS256"

	// Sources records where each setting (by key) came from.
	Sources map[string]Source
	// Warnings are problems that do not stop the daemon; it logs them.
	Warnings []string
}

// Input is what Load reads.
type Input struct {
	// File is the YAML file's path; empty means none.
	File string
	// Env is the environment as os.Environ returns it.
	Env []string
	// Flags holds the flags given on the command line, by setting key.
	Flags map[string]string
}

// Error is one bad setting. Its text names the setting the way the user set
// it (file key with line, environment variable or flag) and says what to do.
type Error struct {
	Key    string
	Where  string // e.g. "O365RELAY_LISTEN", "--listen", "relay.yaml:3 listen"
	Reason string
}

func (e *Error) Error() string {
	if e.Where == "" {
		return e.Key + ": " + e.Reason
	}
	return e.Where + ": " + e.Reason
}

// Load builds the configuration from defaults, the file, the environment and
// flags, in that order, and checks every value. The error, if any, joins one
// *Error per bad setting so a user fixes them all in one go. Load does not
// require the identity settings; CheckDaemon does.
func Load(in Input) (*Config, error) {
	c := &Config{Sources: map[string]Source{}}
	var errs []error
	set := func(s Setting, v string, src Source, where string) {
		if err := s.set(c, v); err != nil {
			errs = append(errs, &Error{Key: s.Key, Where: where, Reason: err.Error()})
			return
		}
		c.Sources[s.Key] = src
	}
	for _, s := range Settings() {
		if err := s.set(c, s.Default); err != nil {
			// A default that does not parse is our bug, not the user's.
			panic(fmt.Sprintf("config: default of %s: %v", s.Key, err))
		}
		c.Sources[s.Key] = FromDefault
	}
	rules := &fileRules{mailboxes: map[string]mailboxOverride{}, line: map[string]int{}}
	if in.File != "" {
		vals, fr, err := readFile(in.File)
		if err != nil {
			return nil, err
		}
		rules = fr
		for _, v := range vals {
			set(v.setting, v.value, FromFile, fmt.Sprintf("%s:%d %s", in.File, v.line, v.setting.Key))
		}
	}
	byEnv := map[string]Setting{}
	for _, s := range Settings() {
		byEnv[s.Env] = s
	}
	// Environment in a fixed order so errors are reproducible.
	env := append([]string(nil), in.Env...)
	sort.Strings(env)
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		if s, ok := byEnv[k]; ok {
			if s.Secret && v == "" {
				continue // an empty secret variable is "not set"
			}
			set(s, v, FromEnv, k)
			continue
		}
		if !strings.HasPrefix(k, EnvPrefix) {
			continue // AZURE_* names the relay does not use belong to the Azure SDKs
		}
		if serviceLink(k) {
			c.Warnings = append(c.Warnings, fmt.Sprintf("ignoring %s: it looks like a Kubernetes service link for a Service named o365relay; set enableServiceLinks: false in the pod spec", k))
			continue
		}
		errs = append(errs, &Error{Where: k, Reason: "not a setting of the relay" + suggest(k, envNames()) + " (README.md, Configuration reference)"})
	}
	keys := make([]string, 0, len(in.Flags))
	for k := range in.Flags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	byKey := map[string]Setting{}
	for _, s := range Settings() {
		byKey[s.Key] = s
	}
	for _, k := range keys {
		s, ok := byKey[k]
		if !ok {
			errs = append(errs, &Error{Where: "--" + flagName(k), Reason: "not a setting"})
			continue
		}
		set(s, in.Flags[k], FromFlag, "--"+s.Flag())
	}
	if len(errs) == 0 {
		errs = append(errs, c.applyRules(in.File, rules)...)
		errs = append(errs, c.check()...)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// EnvPrefix starts every environment variable of the relay's own.
const EnvPrefix = "O365RELAY_"

// serviceLink reports whether name is one of the variables Kubernetes
// injects for a Service named "o365relay" (FOO_SERVICE_HOST, FOO_PORT,
// FOO_PORT_25_TCP_ADDR, …), which share our prefix by accident.
func serviceLink(name string) bool {
	return name == "O365RELAY_PORT" || strings.HasPrefix(name, "O365RELAY_PORT_") ||
		strings.HasPrefix(name, "O365RELAY_SERVICE_")
}

// Effective returns every setting's value as text, secrets redacted, with its
// source, for the daemon's start-up log line.
func (c *Config) Effective() map[string]string {
	m := map[string]string{}
	for _, s := range Settings() {
		v := s.get(c)
		if s.Secret && v != "" {
			v = secret.Redacted
		}
		m[s.Key] = v + " (" + string(c.Sources[s.Key]) + ")"
	}
	if len(c.AuthUsers) > 0 {
		m[authUsersKey] = authUsersSummary(c.AuthUsers) + " (file)" // names and senders, never hashes
	}
	if senders, mailboxes := c.rulesSummary(); senders != "" || mailboxes != "" {
		m["senders"] = senders + " (file)"
		m["mailboxes"] = mailboxes + " (file)"
	}
	return m
}
