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
	"net"
	"net/netip"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/o365relay/o365relay/config/address"
	"github.com/o365relay/o365relay/config/azurestep"
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
// never a managed identity (credential.go).
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

func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// ---------------------------------------------------------------------------
// Value parsers. Each returns an error that says what is expected.

func parseHostPort(v string) (string, error) {
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return "", fmt.Errorf("%q is not host:port (e.g. 127.0.0.1:2525)", v)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return "", fmt.Errorf("%q: port %q is not a number from 0 to 65535", v, port)
	}
	if strings.ContainsAny(host, " /") {
		return "", fmt.Errorf("%q: %q is not a host name or address", v, host)
	}
	return v, nil
}

// parsePrefixes reads a comma-separated list of CIDRs (a bare address means
// that one host). A prefix with host bits set is refused, since
// "10.0.0.1/8" usually means the writer thought of one host and would in
// fact admit sixteen million.
func parsePrefixes(v string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(v, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if !strings.Contains(f, "/") {
			a, err := netip.ParseAddr(f)
			if err != nil {
				return nil, fmt.Errorf("%q is not a CIDR (e.g. 10.0.0.0/8) or an IP address", f)
			}
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR (e.g. 10.0.0.0/8)", f)
		}
		if p.Masked() != p {
			return nil, fmt.Errorf("%q has host bits set; did you mean %s?", f, p.Masked())
		}
		out = append(out, p)
	}
	return out, nil
}

func formatPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

func parseDuration(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration (e.g. 30s, 5m, 120h)", v)
	}
	if d <= 0 {
		return 0, fmt.Errorf("%q must be positive", v)
	}
	return d, nil
}

func parseCount(v string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a whole number ≥ 0", v)
	}
	return n, nil
}

// parseBytes reads a size: a whole number of bytes, or one with a suffix
// KB/MB/GB (powers of 1000, as Exchange quotes its limits) or KiB/MiB/GiB.
func parseBytes(v string) (int64, error) {
	s := strings.TrimSpace(v)
	mult := int64(1)
	for _, u := range []struct {
		suf string
		m   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}} {
		if strings.HasSuffix(s, u.suf) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suf)), u.m
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size (bytes, or e.g. 35MB, 64MiB)", v)
	}
	return n * mult, nil
}

func oneOf(v string, allowed ...string) (string, error) {
	for _, a := range allowed {
		if strings.EqualFold(v, a) {
			return a, nil
		}
	}
	return "", fmt.Errorf("%q is not one of %s", v, strings.Join(allowed, ", "))
}

func parseMailbox(v string) (string, error) {
	if v == "" {
		return "", nil
	}
	if strings.ContainsAny(v, "\x00\x01\r\n\t <>") {
		return "", fmt.Errorf("%q must be a bare address like noreply@example.com (no spaces, brackets or control characters)", v)
	}
	at := strings.LastIndexByte(v, '@')
	if at <= 0 || at == len(v)-1 {
		return "", fmt.Errorf("%q is not an address like noreply@example.com", v)
	}
	// It goes into MAIL FROM when a sender rule rewrites the envelope.
	if m, err := address.Parse(v, true); err != nil || m.String() != v {
		return "", fmt.Errorf("%q is not an RFC 5321 address like noreply@example.com", v)
	}
	return v, nil
}

func parseAuthority(v string) (string, error) {
	u, err := url.Parse(v)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return "", fmt.Errorf("%q must be an https URL such as %s", v, DefaultAuthorityHost)
	}
	return v, nil
}

func parseTenant(v string) (string, error) {
	switch strings.ToLower(v) {
	case "common", "consumers", "organizations":
		// AADSTS9001023 (docs/entra.md#the-token-request).
		return "", fmt.Errorf("%q cannot be used with client credentials; use the Directory (tenant) ID from the app registration's Overview page", v)
	}
	if strings.ContainsAny(v, "/?# ") {
		return "", fmt.Errorf("%q is not a tenant ID or domain", v)
	}
	return v, nil
}

func parseScope(v string) (string, error) {
	if !strings.HasSuffix(v, "/.default") {
		// AADSTS1002012: client-credentials scopes end in /.default.
		return "", fmt.Errorf("%q must end in /.default; Exchange Online SMTP needs %s", v, DefaultScope)
	}
	return v, nil
}

// readable checks a credential file early so the error names the setting.
func readable(v string) (string, error) {
	if v == "" {
		return "", nil
	}
	f, err := os.Open(v)
	if err != nil {
		return "", fmt.Errorf("cannot read %s: %v", v, errors.Unwrap(err))
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return v, nil
}

// ---------------------------------------------------------------------------
// Suggestions for typos.

func suggest(name string, candidates []string) string {
	best, bestD := "", 4
	for _, c := range candidates {
		if d := distance(strings.ToLower(name), strings.ToLower(c)); d < bestD {
			best, bestD = c, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf("; did you mean %s?", best)
}

// distance is the Levenshtein distance.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func envNames() []string {
	var n []string
	for _, s := range Settings() {
		n = append(n, s.Env)
	}
	return n
}

func keyNames() []string {
	var n []string
	for _, s := range Settings() {
		n = append(n, s.Key)
	}
	return n
}
