package config

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/o365relay/o365relay/config/secret"
)

// Defaults that other packages quote by name (in hints and fixes). Every
// default is in Settings; these three are also constants so that no other
// package keeps a copy.
const (
	DefaultUpstream      = "smtp.office365.com:587"
	DefaultAuthorityHost = "https://login.microsoftonline.com/"
	// DefaultScope is the only scope Exchange Online SMTP accepts in the
	// global cloud (docs/entra.md#the-token-request).
	DefaultScope = "https://outlook.office365.com/.default"
)

// Setting describes one configuration setting.
type Setting struct {
	Key     string // YAML key
	Env     string // environment variable
	Default string // as text; "" means empty or unset
	Doc     string // one line for the reference table and --help
	Secret  bool   // never printed
	Group   string

	accessor
}

// accessor parses a value into a Config and prints it back; typ says what
// the value looks like, for --help and the JSON Schema (schema.go).
type accessor struct {
	set func(c *Config, v string) error
	get func(c *Config) string
	typ valueType
}

// as returns a copy of a with the value type t.
func (a accessor) as(t valueType) accessor {
	a.typ = t
	return a
}

// Flag is the command-line flag name (without dashes).
func (s Setting) Flag() string { return flagName(s.Key) }

func flagName(key string) string { return strings.ReplaceAll(key, "_", "-") }

// Check reports whether v is a value of this setting, parsed exactly as
// Load parses it but alone: without the checks across settings. A file
// setting's value must name a file this process can open. Tools that check
// configuration written for the relay elsewhere (the Kubernetes manifest
// validator in deploy/kubernetes/validate) use it instead of a copy of the
// parsers.
func (s Setting) Check(v string) error {
	return s.set(&Config{Sources: map[string]Source{}}, v)
}

func lookup(key string) (Setting, bool) {
	for _, s := range Settings() {
		if s.Key == key {
			return s, true
		}
	}
	return Setting{}, false
}

// Small constructors keep each setting to a few lines.

func str(p func(*Config) *string, parse func(string) (string, error)) accessor {
	return accessor{func(c *Config, v string) error {
		if parse != nil {
			var err error
			if v, err = parse(v); err != nil {
				return err
			}
		}
		*p(c) = v
		return nil
	}, func(c *Config) string {
		return *p(c)
	}, typeString}
}

func sec(p func(*Config) *secret.Secret) accessor {
	return accessor{func(c *Config, v string) error { *p(c) = secret.Secret(v); return nil },
		func(c *Config) string { return p(c).Reveal() }, typeSecret}
}

func count(p func(*Config) *int) accessor {
	return accessor{func(c *Config, v string) error {
		n, err := parseCount(v)
		*p(c) = n
		return err
	}, func(c *Config) string {
		return strconv.Itoa(*p(c))
	}, typeCount}
}

func size(p func(*Config) *int64, positive bool) accessor {
	return accessor{func(c *Config, v string) error {
		n, err := parseBytes(v)
		if err == nil && positive && n == 0 {
			err = fmt.Errorf("%q must be more than 0", v)
		}
		*p(c) = n
		return err
	}, func(c *Config) string {
		return strconv.FormatInt(*p(c), 10)
	}, typeSize}
}

func duration(p func(*Config) *time.Duration) accessor {
	return accessor{func(c *Config, v string) error {
		d, err := parseDuration(v)
		*p(c) = d
		return err
	}, func(c *Config) string { return p(c).String() }, typeDuration}
}

func choice(p func(*Config) *string, allowed ...string) accessor {
	return str(p, func(v string) (string, error) { return oneOf(v, allowed...) }).as(valueType{name: strings.Join(allowed, "|"), choices: allowed})
}

// Settings returns every setting, in the order of the reference table. It
// builds a fresh slice on each call: there is no package-level table to
// mutate.
func Settings() []Setting {
	var out []Setting
	add := func(s Setting, a accessor) {
		s.accessor = a
		out = append(out, s)
	}

	add(Setting{Group: "Local SMTP listener", Key: "listen", Env: "O365RELAY_LISTEN", Default: "127.0.0.1:2525",
		Doc: "Address the applications connect to. A non-loopback address needs an explicit allowed_networks, or TLS and auth_users."},
		str(func(c *Config) *string { return &c.Listen }, parseHostPort).as(typeHostPort))
	add(Setting{Group: "Local SMTP listener", Key: "allowed_networks", Env: "O365RELAY_ALLOWED_NETWORKS", Default: "127.0.0.0/8,::1/128",
		Doc: "Comma-separated CIDRs (or addresses) of clients that may relay; others get 554 5.7.1 — or, with auth_users, must AUTH (530 5.7.0). Empty denies everyone (with auth_users: everyone must AUTH); host bits set is an error."},
		accessor{func(c *Config, v string) error {
			ps, err := parsePrefixes(v)
			c.AllowedNetworks = ps
			return err
		}, func(c *Config) string { return formatPrefixes(c.AllowedNetworks) }, typeCIDRs})
	add(Setting{Group: "Local SMTP listener", Key: "hostname", Env: "O365RELAY_HOSTNAME", Default: "",
		Doc: "Name in the greeting and the Received: header; empty means the machine's host name."},
		accessor{func(c *Config, v string) error {
			if v == "" {
				h, err := os.Hostname()
				if err != nil || h == "" {
					h = "localhost"
				}
				v = h
			}
			if strings.ContainsAny(v, " \t\r\n") {
				return fmt.Errorf("%q is not a host name", v)
			}
			c.Hostname = v
			return nil
		}, func(c *Config) string { return c.Hostname }, typeString})
	add(Setting{Group: "Local SMTP listener", Key: "max_message_bytes", Env: "O365RELAY_MAX_MESSAGE_BYTES", Default: "35MiB",
		Doc: "Largest message accepted (advertised in EHLO SIZE; 552 5.3.4 beyond). Exchange Online's default send limit is 35 MB."},
		size(func(c *Config) *int64 { return &c.MaxMessageBytes }, true))
	add(Setting{Group: "Local SMTP listener", Key: "max_recipients", Env: "O365RELAY_MAX_RECIPIENTS", Default: "500",
		Doc: "Recipients per message (452 4.5.3 beyond); Exchange Online's default is 500."},
		accessor{func(c *Config, v string) error {
			n, err := parseCount(v)
			if err == nil && n == 0 {
				err = fmt.Errorf("%q must be at least 1", v)
			}
			c.MaxRecipients = n
			return err
		}, func(c *Config) string { return strconv.Itoa(c.MaxRecipients) }, typeCount1})
	add(Setting{Group: "Local SMTP listener", Key: "max_connections", Env: "O365RELAY_MAX_CONNECTIONS", Default: "1000",
		Doc: "Concurrent client connections in total (421 4.7.0 beyond); 0 = unlimited."},
		count(func(c *Config) *int { return &c.MaxConnections }))
	add(Setting{Group: "Local SMTP listener", Key: "max_connections_per_client", Env: "O365RELAY_MAX_CONNECTIONS_PER_CLIENT", Default: "0",
		Doc: "Concurrent connections per client address; 0 = unlimited (on loopback every client has the same address)."},
		count(func(c *Config) *int { return &c.MaxConnectionsPerClient }))
	add(Setting{Group: "Local SMTP listener", Key: "line_endings", Env: "O365RELAY_LINE_ENDINGS", Default: "reject",
		Doc: "What to do with a bare CR or LF in DATA: reject (550 5.6.0, the SMTP-smuggling defence) or normalize (rewrite to CRLF, for applications that send Unix line endings)."},
		choice(func(c *Config) *string { return &c.LineEndings }, "reject", "normalize"))
	add(Setting{Group: "Local SMTP listener", Key: "listen_tls_cert", Env: "O365RELAY_LISTEN_TLS_CERT", Default: "",
		Doc: "PEM certificate (leaf first, then its chain) for the listener; with listen_tls_key it enables STARTTLS on listen. Re-read when the file changes."},
		str(func(c *Config) *string { return &c.ListenTLSCert }, readable).as(typePath))
	add(Setting{Group: "Local SMTP listener", Key: "listen_tls_key", Env: "O365RELAY_LISTEN_TLS_KEY", Default: "",
		Doc: "PEM private key of listen_tls_cert (chmod 600)."},
		str(func(c *Config) *string { return &c.ListenTLSKey }, readable).as(typePath))
	add(Setting{Group: "Local SMTP listener", Key: "listen_tls", Env: "O365RELAY_LISTEN_TLS", Default: "",
		Doc: "Address of an implicit-TLS listener (RFC 8314, e.g. :465) beside listen, with the same rules; needs listen_tls_cert. Empty = none."},
		str(func(c *Config) *string { return &c.ListenTLS }, func(v string) (string, error) {
			if v == "" {
				return "", nil
			}
			return parseHostPort(v)
		}).as(typeHostPortOrEmpty))

	add(Setting{Group: "Exchange Online", Key: "upstream", Env: "O365RELAY_UPSTREAM", Default: DefaultUpstream,
		Doc: "Submission server (STARTTLS is required; its certificate is verified against the system roots, which SSL_CERT_FILE extends). GCC High: smtp.office365.us:587."},
		str(func(c *Config) *string { return &c.Upstream }, parseHostPort).as(typeHostPort))
	add(Setting{Group: "Exchange Online", Key: "mailbox", Env: "O365RELAY_MAILBOX", Default: "",
		Doc: "Required by serve unless every sender rule names its mailbox. The mailbox the relay authenticates as (XOAUTH2 user=), for senders without a rule of their own."},
		str(func(c *Config) *string { return &c.Mailbox }, parseMailbox).as(typeAddress))
	add(Setting{Group: "Exchange Online", Key: "mailbox_connections", Env: "O365RELAY_MAILBOX_CONNECTIONS", Default: "3",
		Doc: "Concurrent authenticated connections per mailbox, reused across messages; Exchange refuses a fourth with 432 4.3.2."},
		accessor{func(c *Config, v string) error {
			n, err := parseCount(v)
			if err == nil && n == 0 {
				err = fmt.Errorf("%q must be at least 1", v)
			}
			c.MailboxConnections = n
			return err
		}, func(c *Config) string { return strconv.Itoa(c.MailboxConnections) }, typeCount1})
	add(Setting{Group: "Exchange Online", Key: "mailbox_rate", Env: "O365RELAY_MAILBOX_RATE", Default: "30",
		Doc: "Messages per minute per mailbox (Exchange Online's limit; it delays the excess). A burst of one minute's worth goes at once, more is spaced evenly; 0 = unlimited."},
		count(func(c *Config) *int { return &c.MailboxRate }))
	add(Setting{Group: "Exchange Online", Key: "mailbox_daily_recipients", Env: "O365RELAY_MAILBOX_DAILY_RECIPIENTS", Default: "10000",
		Doc: "Recipients per mailbox in a rolling 24 h (Exchange Online refuses more with 554 5.2.0); messages beyond wait. Counted in memory since start; 0 = unlimited."},
		count(func(c *Config) *int { return &c.MailboxDailyRecipients }))

	add(Setting{Group: "Spool and delivery", Key: "spool_dir", Env: "O365RELAY_SPOOL_DIR", Default: "/var/spool/o365relay",
		Doc: "Directory of the durable queue; must survive restarts (a volume in containers)."},
		str(func(c *Config) *string { return &c.SpoolDir }, func(v string) (string, error) {
			if v == "" {
				return "", fmt.Errorf("must not be empty; name a directory the relay can write")
			}
			return v, nil
		}).as(typeDir))
	add(Setting{Group: "Spool and delivery", Key: "spool_max_messages", Env: "O365RELAY_SPOOL_MAX_MESSAGES", Default: "0",
		Doc: "Queued messages beyond which new mail gets 452 4.3.1; 0 = unlimited."},
		count(func(c *Config) *int { return &c.SpoolMaxItems }))
	add(Setting{Group: "Spool and delivery", Key: "spool_max_bytes", Env: "O365RELAY_SPOOL_MAX_BYTES", Default: "0",
		Doc: "Queued bytes beyond which new mail gets 452 4.3.1; 0 = unlimited (a full disk also gives 452 4.3.1)."},
		size(func(c *Config) *int64 { return &c.SpoolMaxBytes }, false))
	add(Setting{Group: "Spool and delivery", Key: "ack", Env: "O365RELAY_ACK", Default: "spool",
		Doc: "When a client gets 250: spool (once the message is durable on disk) or upstream (after one delivery attempt, so Exchange's permanent refusals reach the application)."},
		choice(func(c *Config) *string { return &c.Ack }, "spool", "upstream"))
	add(Setting{Group: "Spool and delivery", Key: "queue_lifetime", Env: "O365RELAY_QUEUE_LIFETIME", Default: "120h",
		Doc: "How long a message is retried before it goes to failed/ (Postfix's maximal_queue_lifetime)."},
		duration(func(c *Config) *time.Duration { return &c.QueueLifetime }))
	add(Setting{Group: "Spool and delivery", Key: "retry_min", Env: "O365RELAY_RETRY_MIN", Default: "1m",
		Doc: "First retry delay after a transient failure; it doubles (±20% jitter) up to retry_max (Postfix's minimal_backoff_time)."},
		duration(func(c *Config) *time.Duration { return &c.RetryMin }))
	add(Setting{Group: "Spool and delivery", Key: "retry_max", Env: "O365RELAY_RETRY_MAX", Default: "30m",
		Doc: "Longest retry delay (Postfix's maximal_backoff_time)."},
		duration(func(c *Config) *time.Duration { return &c.RetryMax }))
	add(Setting{Group: "Spool and delivery", Key: "shutdown_timeout", Env: "O365RELAY_SHUTDOWN_TIMEOUT", Default: "30s",
		Doc: "How long SIGTERM waits for sessions in DATA before closing them (they got no 250, so nothing is lost)."},
		duration(func(c *Config) *time.Duration { return &c.ShutdownTimeout }))

	add(Setting{Group: "Operations", Key: "admin_listen", Env: "O365RELAY_ADMIN_LISTEN", Default: "127.0.0.1:9025",
		Doc: "HTTP address of /metrics, /healthz, /readyz and /status; empty disables it."},
		str(func(c *Config) *string { return &c.AdminListen }, func(v string) (string, error) {
			if v == "" {
				return "", nil
			}
			return parseHostPort(v)
		}).as(typeHostPortOrEmpty))
	add(Setting{Group: "Operations", Key: "log_level", Env: "O365RELAY_LOG_LEVEL", Default: "info",
		Doc: "debug, info, warn or error. No level logs tokens, keys or message bodies."},
		choice(func(c *Config) *string { return &c.LogLevel }, "debug", "info", "warn", "error"))
	add(Setting{Group: "Operations", Key: "log_format", Env: "O365RELAY_LOG_FORMAT", Default: "json",
		Doc: "json (one object per line) or console."},
		choice(func(c *Config) *string { return &c.LogFormat }, "json", "console"))

	add(Setting{Group: "Identity", Key: "credential", Env: "O365RELAY_CREDENTIAL", Default: "",
		Doc: "Kind of credential: certificate, secret, federated or managed_identity. Empty: the one whose setting is present (a managed identity is used only when named here)."},
		str(func(c *Config) *string { return &c.CredentialKind }, parseCredentialKind).as(valueType{name: strings.Join(credKinds, "|"), choices: append([]string{""}, credKinds...)}))
	add(Setting{Group: "Identity", Key: "tenant_id", Env: "AZURE_TENANT_ID", Default: "",
		Doc: "Required by serve (optional with a managed identity: the doctor then checks the token's tenant against it). Directory (tenant) ID of the app registration."},
		str(func(c *Config) *string { return &c.TenantID }, parseTenant))
	add(Setting{Group: "Identity", Key: "client_id", Env: "AZURE_CLIENT_ID", Default: "",
		Doc: "Required by serve. Application (client) ID of the app registration. With credential managed_identity: the client ID of a user-assigned identity; empty means the system-assigned one."},
		str(func(c *Config) *string { return &c.ClientID }, nil))
	add(Setting{Group: "Identity", Key: "managed_identity_resource_id", Env: "O365RELAY_MANAGED_IDENTITY_RESOURCE_ID", Default: "",
		Doc: "With credential managed_identity: selects a user-assigned identity by its Azure resource ID (/subscriptions/…/providers/Microsoft.ManagedIdentity/userAssignedIdentities/NAME) instead of AZURE_CLIENT_ID."},
		str(func(c *Config) *string { return &c.ManagedIdentityResourceID }, parseResourceID))
	add(Setting{Group: "Identity", Key: "client_certificate_path", Env: "AZURE_CLIENT_CERTIFICATE_PATH", Default: "",
		Doc: "PEM with the certificate and its RSA key (PKCS#1, PKCS#8 or encrypted PKCS#8), or a .pfx/.p12. The recommended credential."},
		str(func(c *Config) *string { return &c.CertificatePath }, readable).as(typePath))
	add(Setting{Group: "Identity", Key: "client_certificate_password", Env: "AZURE_CLIENT_CERTIFICATE_PASSWORD", Default: "", Secret: true,
		Doc: "Password of the PFX or encrypted PEM key."},
		sec(func(c *Config) *secret.Secret { return &c.CertificatePassword }))
	add(Setting{Group: "Identity", Key: "federated_token_file", Env: "AZURE_FEDERATED_TOKEN_FILE", Default: "",
		Doc: "Kubernetes workload identity: a file whose content is the client assertion, re-read for every token request."},
		str(func(c *Config) *string { return &c.FederatedTokenFile }, readable).as(typePath))
	add(Setting{Group: "Identity", Key: "client_secret", Env: "AZURE_CLIENT_SECRET", Default: "", Secret: true,
		Doc: "A client secret, if no certificate can be used."},
		sec(func(c *Config) *secret.Secret { return &c.ClientSecret }))
	add(Setting{Group: "Identity", Key: "authority_host", Env: "AZURE_AUTHORITY_HOST", Default: DefaultAuthorityHost,
		Doc: "Entra ID endpoint; https://login.microsoftonline.us/ for US Government. Another host gets no instance discovery."},
		str(func(c *Config) *string { return &c.AuthorityHost }, parseAuthority).as(typeURL))
	add(Setting{Group: "Identity", Key: "scope", Env: "O365RELAY_SCOPE", Default: DefaultScope,
		Doc: "Token scope; Exchange Online SMTP accepts only this one (https://outlook.office365.us/.default for GCC High)."},
		str(func(c *Config) *string { return &c.Scope }, parseScope).as(typeScope))
	add(Setting{Group: "Identity", Key: "assertion_algorithm", Env: "O365RELAY_ASSERTION_ALGORITHM", Default: "PS256",
		Doc: "Client assertion signature: PS256 with x5t#S256 (Microsoft's current guidance) or RS256 with x5t (older form, ADFS)."},
		choice(func(c *Config) *string { return &c.AssertionAlgorithm }, "PS256", "RS256"))
	return out
}

// Reference renders the settings as the Markdown table in README.md.
func Reference() string {
	var b strings.Builder
	group := ""
	for _, s := range Settings() {
		if s.Group != group {
			if group != "" {
				b.WriteString("\n")
			}
			group = s.Group
			fmt.Fprintf(&b, "**%s**\n\n| file key | environment | flag | default | meaning |\n|---|---|---|---|---|\n", group)
		}
		def := s.Default
		switch {
		case s.Key == "hostname":
			def = "host name"
		case def == "":
			def = "—"
		default:
			def = "`" + def + "`"
		}
		flag := "`--" + s.Flag() + "`"
		if s.Secret {
			flag = "— (refused: visible to every local user)"
		}
		fmt.Fprintf(&b, "| `%s` | `%s` | %s | %s | %s |\n", s.Key, s.Env, flag, def, s.Doc)
	}
	b.WriteString("\n**Config file only**\n\n| file key | meaning |\n|---|---|\n")
	for _, s := range append(FileOnly(), authFileOnly()...) {
		fmt.Fprintf(&b, "| `%s` | %s |\n", s.Key, s.Doc)
	}
	return b.String()
}
