package config

import (
	"fmt"
	"strconv"
	"strings"
)

// exampleValues are the placeholders the example config sets: what serve
// needs and every user must change.
var exampleValues = map[string]string{
	"tenant_id":               "00000000-0000-0000-0000-000000000000",
	"client_id":               "00000000-0000-0000-0000-000000000000",
	"mailbox":                 "relay@example.com",
	"client_certificate_path": "/etc/o365relay/o365relay.pem",
}

// Example returns a commented configuration file naming every setting:
// the four serve needs with placeholders, every other one commented out
// with its default. Its first line points editors that use
// yaml-language-server at the schema beside it (deploy/config ships both).
func Example() string {
	var b strings.Builder
	b.WriteString(`# yaml-language-server: $schema=./o365relay.schema.json
#
# o365relay configuration file: o365relay serve --config FILE.
# Every key is optional; a commented line shows the default. Environment
# variables (O365RELAY_*, AZURE_*) and --flags override the file.
# Check it without starting the relay: o365relay config check FILE
# Generated from the relay's settings (o365relay config example).
`)
	group := ""
	for _, s := range Settings() {
		if s.Group != group {
			group = s.Group
			fmt.Fprintf(&b, "\n# ---- %s %s\n", group, strings.Repeat("-", max(3, 70-len(group))))
		}
		b.WriteString("\n")
		for _, l := range wrap(s.Doc, 74) {
			b.WriteString("# " + l + "\n")
		}
		if v, ok := exampleValues[s.Key]; ok {
			fmt.Fprintf(&b, "%s: %s\n", s.Key, yamlScalar(s, v))
			continue
		}
		fmt.Fprintf(&b, "# %s: %s\n", s.Key, yamlScalar(s, s.Default))
	}
	b.WriteString(`
# ---- Config file only ------------------------------------------------

# Sender rules: which mailbox each envelope sender authenticates as.
# senders:
#   - sender: billing@app.example
#     mailbox: billing@example.com
#   - sender: "*@app.example"
#     mailbox: apps@example.com
#     rewrite: envelope+from
#
# Per-mailbox limits overriding mailbox_connections/_rate/_daily_recipients.
# mailboxes:
#   bulk@example.com: {connections: 2, rate: 60, daily_recipients: 20000}
#
# Local AUTH accounts (need listen_tls_cert; hashes from htpasswd -nBC 12 USER).
# auth_users:
#   - user: billing-app
#     password_bcrypt: "$2y$12$..."
#     senders: [billing@example.com]
`)
	return b.String()
}

// yamlScalar writes v as the YAML the setting's type expects: counts bare,
// everything else double-quoted (a quoted YAML string is JSON's).
func yamlScalar(s Setting, v string) string {
	if s.typ.name == "int" {
		if _, err := strconv.Atoi(v); err == nil {
			return v
		}
	}
	return strconv.Quote(v)
}

// wrap breaks text into lines of at most width runes at spaces.
func wrap(text string, width int) []string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(text) {
		if line != "" && len([]rune(line))+1+len([]rune(w)) > width {
			lines = append(lines, line)
			line = ""
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	if line != "" {
		lines = append(lines, line)
	}
	return lines
}
