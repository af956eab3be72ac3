package validate

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// promDir is deploy/prometheus, relative to this package's directory.
const promDir = "../../prometheus"

func loadMonitoring(t *testing.T) (files map[string][]byte, rules []byte, workloads []Object) {
	t.Helper()
	files = map[string][]byte{}
	for _, f := range []string{"prometheusrule.yaml", "podmonitor.yaml", "servicemonitor.yaml"} {
		b, err := os.ReadFile(filepath.Join(promDir, f))
		if err != nil {
			t.Fatal(err)
		}
		files[f] = b
	}
	rules, err := os.ReadFile(filepath.Join(promDir, "o365relay.rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	for f, data := range loadTree(t) {
		objs, errs := Decode(f, data)
		for _, err := range errs {
			t.Error(err)
		}
		workloads = append(workloads, objs...)
	}
	return files, rules, workloads
}

// The monitoring manifests decode strictly into the operator's types, the
// PrometheusRule is the rules file, and the monitors find the relays of
// deploy/kubernetes.
func TestMonitoring(t *testing.T) {
	t.Parallel()
	files, rules, workloads := loadMonitoring(t)
	for _, err := range Monitoring(files, rules, workloads) {
		t.Error(err)
	}
}

// Each rule fails when broken.
func TestMonitoringMutations(t *testing.T) {
	t.Parallel()
	files, rules, workloads := loadMonitoring(t)
	for _, tc := range []struct{ name, file, old, new, want string }{
		{"rule drifts from the rules file", "prometheusrule.yaml", "for: 10m", "for: 11m", "differs from the rules file"},
		{"unknown field", "podmonitor.yaml", "  podMetricsEndpoints:", "  podMetricEndpoints:", "unknown field"},
		{"selector matches no relay", "podmonitor.yaml", "app.kubernetes.io/name: example-app", "app.kubernetes.io/name: nothing", "matches no pod"},
		{"wrong port", "servicemonitor.yaml", "    - port: admin", "    - port: smtp", `port "smtp"`},
		{"no job label", "servicemonitor.yaml", "          replacement: o365relay", "          replacement: relay", "job="},
		{"service selector", "servicemonitor.yaml", "app.kubernetes.io/component: central", "app.kubernetes.io/component: edge", "matches no Service"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(string(files[tc.file]), tc.old) {
				t.Fatalf("%s lacks %q", tc.file, tc.old)
			}
			mut := map[string][]byte{}
			for k, v := range files {
				mut[k] = v
			}
			mut[tc.file] = []byte(strings.Replace(string(files[tc.file]), tc.old, tc.new, 1))
			errs := Monitoring(mut, rules, workloads)
			for _, err := range errs {
				if strings.Contains(err.Error(), tc.want) {
					return
				}
			}
			t.Errorf("no error containing %q: %v", tc.want, errs)
		})
	}
}
