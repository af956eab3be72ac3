package config

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"
)

// fileValue is one setting read from the YAML file.
type fileValue struct {
	setting Setting
	value   string
	line    int
}

// maxFileSize bounds the config file: it is read whole, and a multi-megabyte
// "config" is a mistake (a certificate bundle given to --config, say).
const maxFileSize = 1 << 20

// readFile reads the YAML file: a single mapping from setting keys to
// scalars (a sequence is accepted for list settings). Unknown keys,
// duplicates and nested mappings are errors that name the line.
func readFile(path string) ([]fileValue, *fileRules, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, nil, fmt.Errorf("config file: %w", err)
	}
	if fi.Size() > maxFileSize {
		return nil, nil, fmt.Errorf("config file %s: %d bytes is too large for a configuration file", path, fi.Size())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("config file: %w", err)
	}
	return parseYAML(path, data)
}

// parseYAML reads the settings and the structured file-only keys (senders,
// mailboxes).
func parseYAML(path string, data []byte) ([]fileValue, *fileRules, error) {
	fr := &fileRules{mailboxes: map[string]mailboxOverride{}, line: map[string]int{}}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, nil, fmt.Errorf("config file %s: %v", path, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil, fr, nil // empty file: all defaults
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, nil, fmt.Errorf("config file %s:%d: expected a mapping of settings (key: value), found %s", path, root.Line, kindName(root))
	}
	var errs []error
	var out []fileValue
	seen := map[string]int{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		where := fmt.Sprintf("%s:%d", path, k.Line)
		if k.Kind != yaml.ScalarNode {
			errs = append(errs, fmt.Errorf("%s: a key must be a plain name", where))
			continue
		}
		if k.Value == authUsersKey {
			if first, dup := seen[k.Value]; dup {
				errs = append(errs, &Error{Key: k.Value, Where: where + " " + k.Value, Reason: fmt.Sprintf("set twice (first on line %d)", first)})
				continue
			}
			seen[k.Value] = k.Line
			fv, ferrs := authUsersValue(path, k, v)
			errs = append(errs, ferrs...)
			out = append(out, fv)
			continue
		}
		if structuredKeys[k.Value] {
			if first, dup := fr.line[k.Value]; dup {
				errs = append(errs, &Error{Key: k.Value, Where: where + " " + k.Value, Reason: fmt.Sprintf("set twice (first on line %d)", first)})
				continue
			}
			errs = append(errs, parseStructured(path, k, v, fr)...)
			continue
		}
		s, ok := lookup(k.Value)
		if !ok {
			errs = append(errs, &Error{Where: where + " " + k.Value, Reason: "unknown key" + suggest(k.Value, keyNames()) + " (README.md, Configuration reference)"})
			continue
		}
		if first, dup := seen[k.Value]; dup {
			errs = append(errs, &Error{Key: s.Key, Where: where + " " + k.Value, Reason: fmt.Sprintf("set twice (first on line %d)", first)})
			continue
		}
		seen[k.Value] = k.Line
		val, err := scalarValue(s, v)
		if err != nil {
			errs = append(errs, &Error{Key: s.Key, Where: where + " " + k.Value, Reason: err.Error()})
			continue
		}
		out = append(out, fileValue{setting: s, value: val, line: k.Line})
	}
	if len(errs) > 0 {
		return nil, nil, errors.Join(errs...)
	}
	return out, fr, nil
}

func scalarValue(s Setting, v *yaml.Node) (string, error) {
	switch v.Kind {
	case yaml.ScalarNode:
		if v.Tag == "!!null" {
			return "", nil
		}
		return v.Value, nil
	case yaml.SequenceNode:
		if s.Key != "allowed_networks" {
			return "", fmt.Errorf("expected a single value, found a list")
		}
		var items []string
		for _, it := range v.Content {
			if it.Kind != yaml.ScalarNode {
				return "", fmt.Errorf("line %d: list items must be plain values", it.Line)
			}
			items = append(items, it.Value)
		}
		return strings.Join(items, ","), nil
	}
	return "", fmt.Errorf("expected a single value, found %s", kindName(v))
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	return "a value"
}

// nodeErrs collects the errors found in one structured key of the file
// (senders, mailboxes, auth_users), each naming the file, line and key.
type nodeErrs struct {
	path, key string
	errs      []error
}

func (e *nodeErrs) bad(n *yaml.Node, format string, args ...any) {
	e.errs = append(e.errs, &Error{Key: e.key, Where: fmt.Sprintf("%s:%d %s", e.path, n.Line, e.key), Reason: fmt.Sprintf(format, args...)})
}
