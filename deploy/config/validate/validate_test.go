// Package validate checks the shipped configuration schema with an
// independent JSON Schema implementation: the schema is valid draft
// 2020-12, the example config validates against it as shipped and with
// every commented default switched on, and the usual mistakes fail. A
// separate module, so the relay's go.mod takes no schema library.
package validate

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"go.yaml.in/yaml/v3"
)

const (
	schemaPath  = "../o365relay.schema.json"
	examplePath = "../o365relay.example.yaml"
)

func compile(t *testing.T) *jsonschema.Schema {
	t.Helper()
	f, err := os.Open(schemaPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	if err := c.AddResource("o365relay.schema.json", doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile("o365relay.schema.json")
	if err != nil {
		t.Fatalf("the schema does not compile against the draft 2020-12 metaschema: %v", err)
	}
	return s
}

// instance turns YAML into the JSON-like value the validator takes.
func instance(t *testing.T, src string) any {
	t.Helper()
	var v any
	if err := yaml.Unmarshal([]byte(src), &v); err != nil {
		t.Fatalf("YAML: %v\n%s", err, src)
	}
	if v == nil {
		v = map[string]any{}
	}
	return normalize(v)
}

// normalize converts yaml.v3's map[string]interface{} and ints into the
// types jsonschema expects.
func normalize(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = normalize(e)
		}
		return x
	case []any:
		for i, e := range x {
			x[i] = normalize(e)
		}
		return x
	case int:
		return float64(x)
	}
	return v
}

func example(t *testing.T) string {
	b, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestExampleValidates(t *testing.T) {
	s := compile(t)
	ex := example(t)
	if !strings.HasPrefix(ex, "# yaml-language-server: $schema=./o365relay.schema.json\n") {
		t.Error("the example does not point editors at the schema beside it")
	}
	if err := s.Validate(instance(t, ex)); err != nil {
		t.Errorf("the example as shipped: %v", err)
	}
	// Every commented "# key: value" line (the defaults) and the
	// commented structured examples, switched on.
	on := regexp.MustCompile(`(?m)^# ([a-z_]+:( .*)?)$`).ReplaceAllString(ex, "$1")
	on = regexp.MustCompile(`(?m)^# (  .*)$`).ReplaceAllString(on, "$1")
	inst := instance(t, on)
	for _, k := range []string{"listen", "retry_max", "senders", "mailboxes", "auth_users", "max_recipients"} {
		if _, ok := inst.(map[string]any)[k]; !ok {
			t.Errorf("uncommented example lacks %s:\n%s", k, on)
		}
	}
	if err := s.Validate(inst); err != nil {
		t.Errorf("the example with every default switched on: %v\n%s", err, on)
	}
}

// The mistakes the relay refuses at start that a schema can see.
func TestMistakesFail(t *testing.T) {
	s := compile(t)
	for _, src := range []string{
		"lsten: 127.0.0.1:2525",      // unknown key (typo)
		"listen: 2525",               // not host:port
		"log_format: xml",            // not a choice
		"retry_min: 5",               // a duration needs a unit
		"max_recipients: 0",          // at least 1
		"max_connections: -1",        // a count
		"max_message_bytes: 35 MiBs", // not a size
		"mailbox: relay",             // not an address
		"scope: https://outlook.office365.com/SMTP.Send", // not /.default
		"authority_host: http://login.microsoftonline.com/",
		"allowed_networks: any",
		"listen: {host: 127.0.0.1}",
		"senders: [{sender: a@b.example, rewrite: sometimes}]",
		"senders: [{mailbox: a@b.example}]",
		"mailboxes: {a@b.example: {connections: 0}}",
		"mailboxes: {a@b.example: {conections: 2}}",
		"auth_users: [{user: app, password_bcrypt: secret, senders: ['*']}]",
	} {
		if err := s.Validate(instance(t, src)); err == nil {
			t.Errorf("schema accepts %q", src)
		}
	}
	for _, src := range []string{
		"",
		"allowed_networks: [10.0.0.0/8, '::1/128']",
		"max_message_bytes: 36700160",
		"admin_listen: ''",
		"log_format: console",
		"senders: [{sender: '*', mailbox: a@b.example, rewrite: envelope+from}]",
		"auth_users: [{user: app, password_bcrypt: '$2y$12$abcdefghijklmnopqrstuuJ2F6V0fqTQ7Sg9yTtxvI1XH0JgRk5gq', senders: ['*@b.example']}]",
	} {
		if err := s.Validate(instance(t, src)); err != nil {
			t.Errorf("schema refuses %q: %v", src, err)
		}
	}
}
