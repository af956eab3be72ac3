package config

import (
	"bytes"
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
)

// The shipped schema and example config are generated from Settings; these
// tests keep them equal. Regenerate both with:
//
//	UPDATE_SCHEMA=1 go test ./config -run 'TestSchemaFile|TestExampleFile'
const (
	schemaFile  = "../deploy/config/o365relay.schema.json"
	exampleFile = "../deploy/config/o365relay.example.yaml"
)

func checkGenerated(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if bytes.Equal(got, want) {
		return
	}
	if os.Getenv("UPDATE_SCHEMA") != "" {
		if err := os.WriteFile(path, want, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Errorf("%s is stale; run UPDATE_SCHEMA=1 go test ./config -run 'TestSchemaFile|TestExampleFile'", path)
}

func TestSchemaFile(t *testing.T) { checkGenerated(t, schemaFile, Schema()) }

func TestExampleFile(t *testing.T) { checkGenerated(t, exampleFile, []byte(Example())) }

// Every setting and file-only key is in the schema with the type its
// parser needs; the schema is valid JSON with no unknown top-level keys
// allowed.
func TestSchemaCoversSettings(t *testing.T) {
	var s struct {
		AdditionalProperties bool                       `json:"additionalProperties"`
		Properties           map[string]json.RawMessage `json:"properties"`
	}
	if err := json.Unmarshal(Schema(), &s); err != nil {
		t.Fatal(err)
	}
	if s.AdditionalProperties {
		t.Error("the schema allows unknown keys")
	}
	keys := keyNames()
	for _, f := range append(FileOnly(), authFileOnly()...) {
		keys = append(keys, f.Key)
	}
	for _, k := range keys {
		if _, ok := s.Properties[k]; !ok {
			t.Errorf("schema lacks %s", k)
		}
	}
	if len(s.Properties) != len(keys) {
		t.Errorf("schema has %d properties, the settings %d", len(s.Properties), len(keys))
	}
	for _, s := range Settings() {
		if s.ValueName() == "string" && s.typ.schema == nil {
			t.Errorf("%s has no value type", s.Key)
		}
	}
}

// Each pattern in the schema accepts the setting's default and what its
// parser accepts in a few representative spellings, and refuses what the
// parser refuses: the schema must not warn about a value the relay takes,
// nor stay silent about the usual mistakes.
func TestSchemaPatternsAgreeWithParsers(t *testing.T) {
	cases := map[string]struct{ good, bad []string }{
		"listen":            {[]string{"127.0.0.1:2525", ":2525", "[::1]:2525", "localhost:25"}, []string{"2525", "127.0.0.1", "a b:25"}},
		"admin_listen":      {[]string{"", "0.0.0.0:9025"}, []string{"9025"}},
		"mailbox":           {[]string{"", "relay@contoso.com"}, []string{"relay", "<relay@contoso.com>", "a b@c"}},
		"retry_min":         {[]string{"1m", "90s", "1h30m", "1.5h"}, []string{"1", "1 m", "one minute", "-1m"}},
		"max_message_bytes": {[]string{"35MiB", "1000", "10 MB", "1GB"}, []string{"35 MiBs", "1.5MB", "-1"}},
		"scope":             {[]string{"https://outlook.office365.com/.default"}, []string{"https://outlook.office365.com/SMTP.Send"}},
		"authority_host":    {[]string{"https://login.microsoftonline.us/"}, []string{"http://login.microsoftonline.com/"}},
		"allowed_networks":  {[]string{"10.0.0.0/8,::1/128", "10.0.0.0/8, 192.168.1.1", ""}, []string{"10.0.0.0/8;", "any"}},
	}
	for _, st := range Settings() {
		c, ok := cases[st.Key]
		if !ok {
			continue
		}
		m := st.typ.schema(st.typ)
		if a, ok := m["anyOf"].([]any); ok {
			m = a[0].(map[string]any)
		}
		re := regexp.MustCompile(m["pattern"].(string))
		for _, v := range c.good {
			if !re.MatchString(v) {
				t.Errorf("%s: schema refuses %q", st.Key, v)
			}
			if err := st.set(&Config{}, v); err != nil {
				t.Errorf("%s: parser refuses %q: %v", st.Key, v, err)
			}
		}
		for _, v := range c.bad {
			if re.MatchString(v) {
				t.Errorf("%s: schema accepts %q", st.Key, v)
			}
			if st.set(&Config{}, v) == nil {
				t.Errorf("%s: parser accepts %q", st.Key, v)
			}
		}
		if st.Default != "" && !re.MatchString(st.Default) {
			t.Errorf("%s: schema refuses the default %q", st.Key, st.Default)
		}
	}
	for _, rw := range []string{"none", "envelope", "envelope+from"} {
		if _, err := parseRewrite(rw); err != nil {
			t.Errorf("the schema's rewrite %q does not parse: %v", rw, err)
		}
	}
}

// The example parses as a config file, names every setting once (active or
// as a commented default), and each commented default is the real one.
func TestExampleNamesEverySetting(t *testing.T) {
	ex := Example()
	if _, _, err := parseYAML("example", []byte(ex)); err != nil {
		t.Fatalf("the example does not parse: %v", err)
	}
	if !strings.HasPrefix(ex, "# yaml-language-server: $schema=") {
		t.Error("the example does not reference the schema on its first line")
	}
	for _, s := range Settings() {
		re := regexp.MustCompile(`(?m)^#? ?` + s.Key + `: (.*)$`)
		m := re.FindAllStringSubmatch(ex, -1)
		if len(m) != 1 {
			t.Errorf("%s appears %d times in the example", s.Key, len(m))
			continue
		}
		if strings.HasPrefix(m[0][0], "#") && s.Default != "" && strings.Trim(m[0][1], `"`) != s.Default {
			t.Errorf("%s: example shows %s, default is %s", s.Key, m[0][1], s.Default)
		}
	}
}
