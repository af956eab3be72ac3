package azuresetup

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// The README's "In Azure" list has the seven steps of Steps, in order, so
// the numbers the script, the doctor and the README use are one numbering.
func TestStepsMatchReadme(t *testing.T) {
	steps := Steps()
	for i, s := range steps {
		if s.N != i+1 || s.Title == "" || s.Produces == "" {
			t.Errorf("step %d: %+v", i+1, s)
		}
	}
	if len(steps) != 7 {
		t.Fatalf("%d steps", len(steps))
	}
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "### 1. In Azure")
	j := strings.Index(s[i+1:], "\n### ")
	if i < 0 || j < 0 {
		t.Fatal("README.md has no '### 1. In Azure' section")
	}
	var nums []string
	for _, m := range regexp.MustCompile(`(?m)^([0-9]+)\. `).FindAllStringSubmatch(s[i:i+1+j], -1) {
		nums = append(nums, m[1])
	}
	if strings.Join(nums, ",") != "1,2,3,4,5,6,7" {
		t.Errorf("README's In Azure list is numbered %v, want 1..7 as Steps()", nums)
	}
}
