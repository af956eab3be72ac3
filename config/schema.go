package config

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
)

// valueType says what a setting's value looks like. --help shows its name
// after the flag (--listen host:port) and Schema turns it into JSON Schema
// constraints, so the help, the schema and the reference table all come
// from Settings.
type valueType struct {
	name    string   // shown after the flag in --help
	choices []string // the allowed values of a choice
	min     int      // the least allowed count
	schema  func(t valueType) map[string]any
}

func stringSchema(pattern string) func(valueType) map[string]any {
	return func(valueType) map[string]any {
		m := map[string]any{"type": "string"}
		if pattern != "" {
			m["pattern"] = pattern
		}
		return m
	}
}

// The value types of the settings. Patterns say what the parsers in
// values.go accept, as far as a regular expression can; a value that passes
// the schema can still be refused at start (a CIDR with host bits set, a
// file that cannot be read), and the error then names the key.
var (
	typeString          = valueType{name: "string", schema: stringSchema("")}
	typeSecret          = valueType{name: "secret", schema: stringSchema("")}
	typeHostPort        = valueType{name: "host:port", schema: stringSchema(`^[^\s/]*:[0-9]{1,5}$`)}
	typeHostPortOrEmpty = valueType{name: "host:port", schema: stringSchema(`^([^\s/]*:[0-9]{1,5})?$`)}
	typeAddress         = valueType{name: "address", schema: stringSchema(`^([^\s<>]+@[^\s<>@]+)?$`)}
	typePath            = valueType{name: "file", schema: stringSchema("")}
	typeDir             = valueType{name: "dir", schema: stringSchema(`.`)}
	typeURL             = valueType{name: "https-url", schema: stringSchema(`^https://[^/\s]+`)}
	typeScope           = valueType{name: "scope", schema: stringSchema(`/\.default$`)}
	typeDuration        = valueType{name: "duration", schema: stringSchema(`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`)}
	typeCount           = valueType{name: "int", schema: countSchema}
	typeCount1          = valueType{name: "int", min: 1, schema: countSchema}
	typeSize            = valueType{name: "size", schema: func(valueType) map[string]any {
		return map[string]any{"type": []string{"integer", "string"}, "minimum": 0,
			"pattern": `^\s*[0-9]+\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$`}
	}}
	typeCIDRs = valueType{name: "cidrs", schema: func(valueType) map[string]any {
		item := `^\s*[0-9A-Fa-f:.]+(/[0-9]{1,3})?\s*$`
		return map[string]any{"anyOf": []any{
			map[string]any{"type": "string", "pattern": `^(\s*[0-9A-Fa-f:.]+(/[0-9]{1,3})?\s*(,|$))*$`},
			map[string]any{"type": "array", "items": map[string]any{"type": "string", "pattern": item}},
		}}
	}}
)

func countSchema(t valueType) map[string]any {
	return map[string]any{"type": "integer", "minimum": t.min}
}

func choiceSchema(t valueType) map[string]any {
	return map[string]any{"type": "string", "enum": t.choices}
}

// ValueName is what --help shows after the setting's flag: host:port,
// duration, size, int, file, or the choices (json|console).
func (s Setting) ValueName() string {
	if s.typ.name == "" {
		return "string"
	}
	return s.typ.name
}

// SchemaID is where the schema is published; editors that follow the
// example's yaml-language-server comment find the copy beside it instead.
const SchemaID = "https://github.com/o365relay/o365relay/raw/main/deploy/config/o365relay.schema.json"

// Schema returns the JSON Schema (draft 2020-12) of the configuration file,
// generated from Settings and the file-only keys. deploy/config holds the
// committed copy; a test keeps the two equal.
func Schema() []byte {
	props := map[string]any{}
	for _, s := range Settings() {
		t := s.typ
		var m map[string]any
		switch {
		case t.choices != nil:
			m = choiceSchema(t)
		case t.schema == nil:
			m = typeString.schema(t)
		default:
			m = t.schema(t)
		}
		desc := s.Doc + " Environment variable " + s.Env + ", flag --" + s.Flag() + "."
		if s.Secret {
			desc += " A secret: prefer the environment variable or a file readable only by the relay."
		}
		m["description"] = desc
		if s.Default != "" {
			m["default"] = schemaDefault(t, s.Default)
		}
		props[s.Key] = m
	}
	for k, v := range structuredSchemas() {
		props[k] = v
	}
	root := map[string]any{
		"$schema":              "https://json-schema.org/draft/2020-12/schema",
		"$id":                  SchemaID,
		"title":                "o365relay configuration file",
		"description":          "Settings of o365relay (serve --config FILE). Every key is optional; environment variables and flags override the file. Generated from the relay's setting descriptors.",
		"type":                 "object",
		"additionalProperties": false,
		"properties":           props,
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(root); err != nil {
		panic("config: schema: " + err.Error()) // only maps, slices and strings: cannot fail
	}
	return b.Bytes()
}

// schemaDefault types a default as the schema declares it.
func schemaDefault(t valueType, v string) any {
	if t.schema != nil && t.name == "int" {
		if n, err := strconv.Atoi(v); err == nil {
			return n
		}
	}
	return v
}

// structuredSchemas are the file-only keys (senders, mailboxes, auth_users),
// whose shapes senders.go and auth.go parse.
func structuredSchemas() map[string]any {
	doc := map[string]string{}
	for _, f := range append(FileOnly(), authFileOnly()...) {
		doc[f.Key] = strings.ReplaceAll(f.Doc, "`", "")
	}
	pattern := `^(\*|\*@[^\s<>@*]+|[^\s<>*]+@[^\s<>@*]+)$`
	obj := func(required []string, props map[string]any) map[string]any {
		return map[string]any{"type": "object", "additionalProperties": false, "required": required, "properties": props}
	}
	count := func(min int, d string) map[string]any {
		return map[string]any{"type": "integer", "minimum": min, "description": d}
	}
	sender := map[string]any{"type": "string", "pattern": pattern}
	return map[string]any{
		"senders": map[string]any{"type": "array", "description": doc["senders"], "items": obj([]string{"sender"}, map[string]any{
			"sender":  withDesc(sender, "An address, *@domain or * (everything else)."),
			"mailbox": withDesc(typeAddress.schema(typeAddress), "The mailbox to authenticate as; default: the mailbox setting."),
			"rewrite": map[string]any{"type": "string", "enum": []string{"none", "envelope", "envelope+from"}, "default": "none",
				"description": "Rewrite the envelope sender (and the From: header) to the mailbox."},
		})},
		"mailboxes": map[string]any{"type": "object", "description": doc["mailboxes"],
			"propertyNames": map[string]any{"pattern": `^[^\s<>]+@[^\s<>@]+$`},
			"additionalProperties": map[string]any{"type": "object", "additionalProperties": false, "properties": map[string]any{
				"connections":      count(1, "Overrides mailbox_connections for this mailbox."),
				"rate":             count(0, "Overrides mailbox_rate (messages per minute; 0 = unlimited)."),
				"daily_recipients": count(0, "Overrides mailbox_daily_recipients (0 = unlimited)."),
			}}},
		authUsersKey: map[string]any{"type": "array", "description": doc[authUsersKey], "items": obj([]string{"user", "password_bcrypt", "senders"}, map[string]any{
			"user":            map[string]any{"type": "string", "minLength": 1, "description": "The AUTH user name."},
			"password_bcrypt": map[string]any{"type": "string", "pattern": `^\$2[aby]\$[0-9]{2}\$`, "description": "bcrypt hash of the password (htpasswd -nBC 12 USER), never the password."},
			"senders": map[string]any{"description": "Envelope senders this account may use: addresses, *@domain or *.",
				"anyOf": []any{sender, map[string]any{"type": "array", "minItems": 1, "items": sender}}},
		})},
	}
}

func withDesc(m map[string]any, d string) map[string]any {
	m["description"] = d
	return m
}
