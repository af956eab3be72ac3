package doctor

import (
	"os"
	"regexp"
	"testing"
)

// README.md's table of doctor lines is generated from Troubleshooting, so
// its check numbers and Azure steps are the ones the checks use.
// Regenerate with: UPDATE_README=1 go test ./relay/doctor -run TestReadmeTroubleshooting
func TestReadmeTroubleshooting(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?s)<!-- BEGIN DOCTOR LINES.*?-->\n(.*?)<!-- END DOCTOR LINES -->`)
	m := re.FindSubmatchIndex(readme)
	if m == nil {
		t.Fatal("README.md has no <!-- BEGIN DOCTOR LINES --> ... <!-- END DOCTOR LINES --> section")
	}
	want := Troubleshooting()
	if string(readme[m[2]:m[3]]) == want {
		return
	}
	if os.Getenv("UPDATE_README") != "" {
		out := string(readme[:m[2]]) + want + string(readme[m[3]:])
		if err := os.WriteFile("../../README.md", []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("README.md's table of doctor lines is stale; run UPDATE_README=1 go test ./relay/doctor -run TestReadmeTroubleshooting")
}
