package azurestep

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

func TestTableIsNumberedInOrder(t *testing.T) {
	all := All()
	if len(all) != 7 {
		t.Fatalf("%d steps, want 7", len(all))
	}
	for i, s := range all {
		if int(s.Step) != i+1 {
			t.Errorf("row %d is step %d", i+1, s.Step)
		}
		if s.Name == "" || s.Title == "" || s.Anchor == "" || s.Produces == "" || s.Howto == "" {
			t.Errorf("step %d has an empty field: %+v", s.Step, s)
		}
		if s.Step.Info() != s {
			t.Errorf("step %d: Info() is not its row", s.Step)
		}
	}
	if got := SMTPAuth.Named(); got != "Azure step 7: allow SMTP AUTH" {
		t.Errorf("Named() = %q", got)
	}
	if got := List(NewServicePrincipal, AddMailboxPermission); got != "Azure steps 5, 6" {
		t.Errorf("List = %q", got)
	}
}

// generated replaces (UPDATE_README=1) or checks the text between a BEGIN
// and an END marker in a Markdown file.
func generated(t *testing.T, path, name, want string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?s)<!-- BEGIN ` + name + `.*?-->\n(.*?)<!-- END ` + name + ` -->`)
	m := re.FindSubmatchIndex(b)
	if m == nil {
		t.Fatalf("%s has no <!-- BEGIN %s --> ... <!-- END %s --> section", path, name, name)
	}
	if string(b[m[2]:m[3]]) == want {
		return
	}
	if os.Getenv("UPDATE_README") != "" {
		out := string(b[:m[2]]) + want + string(b[m[3]:])
		if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("%s: the %s section is stale; run UPDATE_README=1 go test ./config/azurestep", path, name)
}

// The README's "In Azure" list is generated from the table, so its
// numbers are the hints' and the doctor's.
func TestReadmeSteps(t *testing.T) {
	generated(t, "../../README.md", "AZURE STEPS", ReadmeList())
}

// docs/azure.md's table of the steps is generated too, and every step has
// its section there under the anchor the table names.
func TestDocsSteps(t *testing.T) {
	generated(t, "../../docs/azure.md", "AZURE STEPS", DocsTable())
	b, err := os.ReadFile("../../docs/azure.md")
	if err != nil {
		t.Fatal(err)
	}
	headings := map[string]string{} // anchor → heading text
	for _, m := range regexp.MustCompile(`(?m)^#{1,6} (.*)$`).FindAllStringSubmatch(string(b), -1) {
		headings[slug(m[1])] = m[1]
	}
	for _, s := range All() {
		h, ok := headings[s.Anchor]
		if !ok {
			t.Errorf("step %d: docs/azure.md has no heading with the anchor %s", s.Step, s.Anchor)
			continue
		}
		if !strings.HasPrefix(h, "Step "+strconv.Itoa(int(s.Step))+":") {
			t.Errorf("step %d: its anchor %s is the heading %q of another step", s.Step, s.Anchor, h)
		}
	}
}

// slug is the GitHub anchor of a Markdown heading.
func slug(h string) string {
	h = strings.ToLower(strings.ReplaceAll(h, "`", ""))
	h = regexp.MustCompile(`[^\w\- ]`).ReplaceAllString(h, "")
	return strings.ReplaceAll(h, " ", "-")
}
