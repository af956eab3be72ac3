package validate

import (
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/o365relay/o365relay/config"
)

// Every key the relay rules read is a setting of the relay: a rename in
// config fails here by name, not as a panic in the middle of a rule.
func TestRuleSettingsExist(t *testing.T) {
	for _, key := range []string{keyListen, keyAllowedNetworks, keyAdminListen, keySpoolDir, keyShutdownTimeout, keyCertificatePath, keyFederatedTokenFile} {
		found := false
		for _, s := range config.Settings() {
			found = found || s.Key == key
		}
		if !found {
			t.Errorf("the relay rules read %q, which config.Settings() no longer has", key)
		}
	}
	if len(secretEnvs()) == 0 {
		t.Error("config.Settings() marks no setting Secret: the literal-secret and ConfigMap rules check nothing")
	}
}

// The variables the workload identity webhook injects are ones the relay
// reads; otherwise workload identity would not configure it.
func TestWebhookEnvAreSettings(t *testing.T) {
	for _, name := range webhookEnv {
		if _, ok := relaySettings()[name]; !ok {
			t.Errorf("the webhook injects %s, which is not a setting of the relay", name)
		}
	}
}

// Every setting of the relay is a known name, in a ConfigMap or in env,
// and only those: the list is config's, not a copy.
func TestEverySettingIsKnown(t *testing.T) {
	for _, s := range config.Settings() {
		if err := checkEnvName(s.Env); err != nil {
			t.Errorf("%s: %v", s.Env, err)
		}
	}
	for _, name := range []string{"O365RELAY_LISTN", "AZURE_CLIENT_SECRETS", config.EnvPrefix + "NO_SUCH_SETTING"} {
		if err := checkEnvName(name); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
	for _, name := range []string{"GOMEMLIMIT", "SMTP_HOST", "TZ"} {
		if err := checkEnvName(name); err != nil {
			t.Errorf("%s (not the relay's) refused: %v", name, err)
		}
	}
}

// What the relay accepts, the validator accepts: values are parsed by the
// relay's own parsers, not by a stricter copy.
func TestAcceptsWhatTheRelayAccepts(t *testing.T) {
	t.Parallel()
	base := loadTree(t)
	for _, tc := range []struct{ name, file, old, new string }{
		{"bare address as a network", "central/configmap.yaml", `"10.244.0.0/16"`, `"10.244.0.0/16, 10.245.0.7"`},
		{"IPv6 network", "central/configmap.yaml", `"10.244.0.0/16"`, `"10.244.0.0/16,fd00::/8"`},
		{"longer drain within the grace period", "central/configmap.yaml", `O365RELAY_SHUTDOWN_TIMEOUT: "30s"`, `O365RELAY_SHUTDOWN_TIMEOUT: "45s"`},
		{"every address of the pod", "central/configmap.yaml", `O365RELAY_LISTEN: "0.0.0.0:2525"`, `O365RELAY_LISTEN: ":2525"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := mutate(t, base, tc.file, tc.old, tc.new)
			for _, err := range tr.validate(t, path.Dir(tc.file)) {
				t.Error(err)
			}
		})
	}
}

// A ServiceMonitor or PodMonitor in a deployment directory (as the chart
// renders them) scrapes /metrics on a port of what it selects, with the
// job label the alert rules expect. deploy/prometheus's monitors, put
// beside the workloads they select, pass; each broken one fails.
func TestMonitorsInDir(t *testing.T) {
	t.Parallel()
	base := loadTree(t)
	for _, tc := range []struct{ dir, monitor string }{
		{"central", "servicemonitor.yaml"},
		{"sidecar", "podmonitor.yaml"},
	} {
		b, err := os.ReadFile(filepath.Join(promDir, tc.monitor))
		if err != nil {
			t.Fatal(err)
		}
		// Outside dir, so the kustomization does not ask to list it.
		file := "prometheus/" + tc.monitor
		withMonitor := func(b []byte) []error {
			files := map[string][]byte{file: b}
			for f, data := range base {
				if path.Dir(f) == tc.dir {
					files[f] = data
				}
			}
			return Dir(tc.dir, files, base.examples(t))
		}
		for _, err := range withMonitor(b) {
			t.Errorf("%s with %s: %v", tc.dir, tc.monitor, err)
		}
		for _, m := range []struct{ old, new, want string }{
			{"path: /metrics", "path: /stats", `endpoint path "/stats": the relay serves /metrics`},
			{"port: admin", "port: smtpx", `endpoint port "smtpx" is not a port of what it selects`},
			{"replacement: o365relay", "replacement: relay", `endpoint does not set job="o365relay"`},
		} {
			if !strings.Contains(string(b), m.old) {
				t.Fatalf("%s lacks %q", tc.monitor, m.old)
			}
			errs := withMonitor([]byte(strings.Replace(string(b), m.old, m.new, 1)))
			found := false
			for _, err := range errs {
				found = found || strings.Contains(err.Error(), m.want)
			}
			if !found {
				t.Errorf("%s in %s, %q -> %q: no error containing %q; got %v", tc.monitor, tc.dir, m.old, m.new, m.want, errs)
			}
		}
	}
}
