package relay

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Every metric the shipped alert rules, their tests and the dashboard
// (deploy/prometheus) name is one the relay exports: a renamed metric must
// not leave an alert that silently never fires.
func TestDeployedRulesNameExportedMetrics(t *testing.T) {
	cs := (&Relay{}).collectors()                                        // Describe reads no state
	exported := map[string]bool{"o365relay_smtp_connections_open": true} // made in New
	for _, c := range cs {
		ch := make(chan *prometheus.Desc, 64)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			m := regexp.MustCompile(`fqName: "([^"]+)"`).FindStringSubmatch(d.String())
			if m == nil {
				t.Fatalf("cannot read the name of %s", d)
			}
			exported[m[1]] = true
		}
	}
	name := regexp.MustCompile(`\bo365relay_[a-z0-9_]+`)
	files, err := filepath.Glob("../deploy/prometheus/*")
	if err != nil || len(files) < 4 {
		t.Fatalf("deploy/prometheus: %v %v", files, err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range name.FindAllString(string(b), -1) {
			base := n
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if s, ok := strings.CutSuffix(n, suffix); ok && exported[s] {
					base = s
				}
			}
			if !exported[base] {
				t.Errorf("%s names %s, which the relay does not export", filepath.Base(f), n)
			}
		}
	}
}
