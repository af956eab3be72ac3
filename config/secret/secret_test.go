package secret

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

func TestSecretNeverFormats(t *testing.T) {
	const v = "eyJhbGciOiJQUzI1NiJ9.c2VjcmV0.c2ln"
	s := Secret(v)
	wrapped := struct {
		Name  string
		Token Secret
	}{"x", s}
	j, err := json.Marshal(wrapped)
	if err != nil {
		t.Fatal(err)
	}
	for _, out := range []string{
		fmt.Sprint(s), fmt.Sprintf("%s %v %q %+v %#v", s, s, s, wrapped, wrapped), string(j),
	} {
		if strings.Contains(out, v) || strings.Contains(out, "c2VjcmV0") {
			t.Errorf("secret leaked: %s", out)
		}
		if !strings.Contains(out, Redacted) {
			t.Errorf("no placeholder in %q", out)
		}
	}
	if s.Reveal() != v {
		t.Fatal("Reveal lost the value")
	}
	if Secret("").String() != "" {
		t.Fatal("empty secret should print empty, so 'unset' stays visible")
	}
}
