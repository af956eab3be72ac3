package config

import (
	"sort"

	"github.com/o365relay/o365relay/config/secret"
)

// Shown is one setting as `o365relay config show` prints it: the effective
// value (secrets redacted) and where it came from.
type Shown struct {
	Key    string `json:"key"`
	Value  string `json:"value"`
	Source Source `json:"source"`
	// Where names how it was set: the variable, the --flag, or the file;
	// empty for a default.
	Where string `json:"where,omitempty"`
}

// Show lists every setting in the reference table's order, then the file's
// structured keys (senders, mailboxes, auth_users) when set. file is the
// configuration file's path, for Where.
func (c *Config) Show(file string) []Shown {
	var out []Shown
	for _, s := range Settings() {
		v := s.get(c)
		if s.Secret && v != "" {
			v = secret.Redacted
		}
		sh := Shown{Key: s.Key, Value: v, Source: c.Sources[s.Key]}
		switch sh.Source {
		case FromEnv:
			sh.Where = s.Env
		case FromFlag:
			sh.Where = "--" + s.Flag()
		case FromFile:
			sh.Where = file
		}
		out = append(out, sh)
	}
	eff := c.Effective()
	var extra []string
	for _, k := range []string{"senders", "mailboxes", authUsersKey} {
		if v, ok := eff[k]; ok && v != " (file)" {
			extra = append(extra, k)
		}
	}
	sort.Strings(extra)
	for _, k := range extra {
		v := eff[k]
		out = append(out, Shown{Key: k, Value: v[:len(v)-len(" (file)")], Source: FromFile, Where: file})
	}
	return out
}
