package config

import (
	"errors"
	"testing"
)

// Check is Load's parser, one setting at a time: every default passes, and
// wherever Check refuses a value, Load given that value in the environment
// refuses it with the same reason, naming the variable. (Load may refuse
// more: it also checks settings against each other.)
func TestCheckIsLoadsParser(t *testing.T) {
	values := []string{"", "abc", "0", "-1", "1", "35MB", "30s", "0s", "-5s", "1h",
		"127.0.0.1:2525", "0.0.0.0:99999", ":2525", "0.0.0.0", "10.0.0.0/8", "10.0.0.1/8", "10.0.0.7", "0.0.0.0/0, ::/0",
		"spool", "upstream", "json", "verbose", "PS256", "a@b.example", "not an address", "https://login.microsoftonline.com/", "http://x/"}
	refused := 0
	for _, s := range Settings() {
		if err := s.Check(s.Default); err != nil {
			t.Errorf("%s: the default %q fails Check: %v", s.Env, s.Default, err)
		}
		if s.ValueName() == "file" || s.ValueName() == "dir" {
			continue // Check opens the file; Load too, and reports it the same way
		}
		for _, v := range values {
			cerr := s.Check(v)
			if cerr == nil {
				continue
			}
			refused++
			_, lerr := Load(Input{Env: []string{s.Env + "=" + v}})
			if !hasError(lerr, s.Env, cerr.Error()) {
				t.Errorf("%s=%q: Check says %q, Load says %v", s.Env, v, cerr, lerr)
			}
		}
	}
	if refused < 300 {
		t.Errorf("Check refused only %d values: the table no longer exercises the parsers", refused)
	}
}

// hasError reports whether err joins a *Error set at where with reason.
func hasError(err error, where, reason string) bool {
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return false
	}
	for _, e := range j.Unwrap() {
		var ce *Error
		if errors.As(e, &ce) && ce.Where == where && ce.Reason == reason {
			return true
		}
	}
	return false
}
