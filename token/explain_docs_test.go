package token

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/o365relay/o365relay/config/azurestep"
)

// docs/azure.md's AADSTS table lists every code Explain knows, with the
// Azure step its hint names ("—" for none), so the page and the hints
// cannot number differently.
func TestAADSTSTableMatchesExplain(t *testing.T) {
	b, err := os.ReadFile("../docs/azure.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n## AADSTS codes\n")
	if !ok {
		t.Fatal("docs/azure.md has no section AADSTS codes")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	rows := regexp.MustCompile(`(?m)^\| ([0-9]+) \| .* \| ([^|]*) \|$`).FindAllStringSubmatch(section, -1)
	seen := map[int]bool{}
	for _, r := range rows {
		code, _ := strconv.Atoi(r[1])
		seen[code] = true
		step, hint := Explain(code)
		if hint == "" {
			t.Errorf("docs/azure.md lists AADSTS%d, which Explain does not know", code)
			continue
		}
		want := "—"
		if step > 0 {
			want = strconv.Itoa(int(step))
		}
		if got, _, _ := strings.Cut(strings.TrimSpace(r[2]), " "); got != want {
			t.Errorf("docs/azure.md gives AADSTS%d step %q, Explain %q", code, got, want)
		}
	}
	for code := range explanations {
		if !seen[code] {
			t.Errorf("AADSTS%d has a hint but no row in docs/azure.md's AADSTS table", code)
		}
	}
}

// A hint that names a step ends with the step's number and name from the
// table, and no hint numbers a step by hand anywhere else.
func TestExplainNamesTheStepFromTheTable(t *testing.T) {
	byHand := regexp.MustCompile(`(?i)step [0-9]`)
	for code := range explanations {
		step, hint := Explain(code)
		if step > 0 {
			var ok bool
			if hint, ok = strings.CutSuffix(hint, " ("+step.Named()+")"); !ok {
				t.Errorf("AADSTS%d: hint %q does not end with (%s)", code, hint, step.Named())
			}
		}
		if byHand.MatchString(hint) {
			t.Errorf("AADSTS%d: hint %q numbers a step by hand", code, hint)
		}
	}
	if step, _ := Explain(70011); step != 0 {
		t.Errorf("AADSTS70011 (scope) names %s; it is the scope setting", step)
	}
	if step, _ := Explain(700027); step != azurestep.Credential {
		t.Errorf("AADSTS700027 names %s", step)
	}
}
