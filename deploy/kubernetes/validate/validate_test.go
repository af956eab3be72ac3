package validate

import (
	"errors"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// root is deploy/kubernetes, relative to this package's directory.
const root = ".."

// tree is every manifest under root, keyed by slash path relative to root.
type tree map[string][]byte

func loadTree(t *testing.T) tree {
	t.Helper()
	files := tree{}
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel == "validate" || rel == "schemas" {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(rel, ".yml") {
			return errors.New(rel + ": use the .yaml extension")
		}
		if !strings.HasSuffix(rel, ".yaml") {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files[rel] = data
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// dirs returns the deployment directories: those with a kustomization.yaml.
func (tr tree) dirs() []string {
	var out []string
	for f := range tr {
		if path.Base(f) == "kustomization.yaml" {
			out = append(out, path.Dir(f))
		}
	}
	sort.Strings(out)
	return out
}

// examples are the objects of *.example.yaml files, which other directories
// may reference (the certificate Secret is created by hand, not applied).
func (tr tree) examples(t *testing.T) []Object {
	t.Helper()
	var out []Object
	for f, data := range tr {
		if strings.HasSuffix(f, ".example.yaml") {
			objs, errs := Decode(f, data)
			for _, err := range errs {
				t.Error(err)
			}
			out = append(out, objs...)
		}
	}
	return out
}

func (tr tree) validate(t *testing.T, dir string) []error {
	t.Helper()
	files := map[string][]byte{}
	for f, data := range tr {
		if path.Dir(f) == dir {
			files[f] = data
		}
	}
	return Dir(dir, files, tr.examples(t))
}

// The expected deployments exist and every manifest belongs to one.
func TestLayout(t *testing.T) {
	t.Parallel()
	tr := loadTree(t)
	got := strings.Join(tr.dirs(), " ")
	if want := "central sidecar workload-identity"; got != want {
		t.Errorf("deployment directories = %q, want %q", got, want)
	}
	for f := range tr {
		if !strings.Contains(f, "/") {
			t.Errorf("%s: manifests belong in a deployment directory", f)
		}
		if _, ok := tr[path.Dir(f)+"/kustomization.yaml"]; !ok {
			t.Errorf("%s: its directory has no kustomization.yaml", f)
		}
	}
}

// TestManifests is the real check: every deployment directory decodes
// strictly into k8s.io/api types and passes the consistency rules.
func TestManifests(t *testing.T) {
	t.Parallel()
	tr := loadTree(t)
	for _, dir := range tr.dirs() {
		t.Run(dir, func(t *testing.T) {
			t.Parallel()
			for _, err := range tr.validate(t, dir) {
				t.Error(err)
			}
		})
	}
}

// Specific facts deploy/README.md promises, checked on the decoded objects.
func TestRequiredSettings(t *testing.T) {
	t.Parallel()
	tr := loadTree(t)
	objs := map[string]Object{}
	for f, data := range tr {
		decoded, errs := Decode(f, data)
		for _, err := range errs {
			t.Fatal(err)
		}
		for _, o := range decoded {
			objs[path.Dir(f)+":"+o.Kind+"/"+o.Name] = o
		}
	}
	get := func(key string) Object {
		o, ok := objs[key]
		if !ok {
			t.Fatalf("missing %s", key)
		}
		return o
	}

	sidecar := podSpec(get("sidecar:Deployment/example-app"))
	relay := sidecar.InitContainers[0]
	if got := relay.Resources.Requests.Cpu().String(); got != "20m" {
		t.Errorf("sidecar relay CPU request = %s, want 20m", got)
	}
	if got := relay.Resources.Requests.Memory().String(); got != "32Mi" {
		t.Errorf("sidecar relay memory request = %s, want 32Mi", got)
	}
	if got := relay.Resources.Limits.Memory().String(); got != "64Mi" {
		t.Errorf("sidecar relay memory limit = %s, want 64Mi", got)
	}
	if m := sidecar.Volumes[0].Secret.DefaultMode; m == nil || *m != 0o400 {
		t.Errorf("certificate defaultMode = %v, want 0400", m)
	}
	if sidecar.Volumes[1].EmptyDir == nil {
		t.Errorf("sidecar spool is not an emptyDir")
	}

	wi := get("workload-identity:Deployment/example-app")
	if wi.Obj.(interface{ GetName() string }).GetName() == "" || podLabels(wi)["azure.workload.identity/use"] != "true" {
		t.Errorf("workload identity pod lacks the azure.workload.identity/use label")
	}
	sa := get("workload-identity:ServiceAccount/o365relay")
	for _, k := range []string{"azure.workload.identity/client-id", "azure.workload.identity/tenant-id"} {
		if _, ok := sa.Obj.(interface{ GetAnnotations() map[string]string }).GetAnnotations()[k]; !ok {
			t.Errorf("ServiceAccount lacks annotation %s", k)
		}
	}
	for _, v := range podSpec(wi).Volumes {
		if v.Secret != nil {
			t.Errorf("workload identity deployment mounts Secret %q; it needs no certificate", v.Secret.SecretName)
		}
	}

	ss := get("central:StatefulSet/o365relay")
	if podSpec(ss) == nil {
		t.Fatal("central StatefulSet has no pod spec")
	}
	for _, kind := range []string{"Service/o365relay", "NetworkPolicy/o365relay", "PodDisruptionBudget/o365relay", "ConfigMap/o365relay-central"} {
		get("central:" + kind)
	}
}

// mutate returns a copy of tr with one replacement made in file; the test
// fails if old is not there, so a stale case cannot pass vacuously.
func mutate(t *testing.T, tr tree, file, old, new string) tree {
	t.Helper()
	data, ok := tr[file]
	if !ok {
		t.Fatalf("no file %s", file)
	}
	if !strings.Contains(string(data), old) {
		t.Fatalf("%s does not contain %q", file, old)
	}
	out := tree{}
	for k, v := range tr {
		out[k] = v
	}
	out[file] = []byte(strings.Replace(string(data), old, new, 1))
	return out
}

// Each plausible mistake must be caught: a validator that accepts anything
// is a defect.
func TestCatchesMistakes(t *testing.T) {
	t.Parallel()
	base := loadTree(t)
	cases := []struct {
		name, file, old, new, want string
	}{
		{"unknown field", "sidecar/deployment.yaml", "  replicas: 1", "  replica: 1", `unknown field "replica"`},
		{"wrong type", "central/statefulset.yaml", "  replicas: 2", "  replicas: two", "cannot unmarshal string"},
		{"duplicate key", "sidecar/configmap.yaml", `  O365RELAY_ACK: "spool"`, "  O365RELAY_ACK: \"spool\"\n  O365RELAY_ACK: \"upstream\"", "already set"},
		{"unknown kind", "central/service.yaml", "kind: Service\nmetadata:\n  name: o365relay\n", "kind: Ingress\nmetadata:\n  name: o365relay\n", "unknown apiVersion/kind"},
		{"open listener", "central/configmap.yaml", `  O365RELAY_ALLOWED_NETWORKS: "10.244.0.0/16"`, "", "O365RELAY_ALLOWED_NETWORKS is not set"},
		{"host bits", "central/configmap.yaml", `"10.244.0.0/16"`, `"10.244.0.1/16"`, "host bits"},
		{"allow all", "central/configmap.yaml", `"10.244.0.0/16"`, `"0.0.0.0/0"`, "allows every address"},
		{"loopback admin", "sidecar/configmap.yaml", `O365RELAY_ADMIN_LISTEN: "0.0.0.0:9025"`, `O365RELAY_ADMIN_LISTEN: "127.0.0.1:9025"`, "is loopback"},
		{"config typo", "sidecar/configmap.yaml", "O365RELAY_LISTEN:", "O365RELAY_LISTN:", "not a setting"},
		{"subPath cert", "sidecar/deployment.yaml", "              mountPath: /etc/o365relay/cert\n", "              mountPath: /etc/o365relay/cert\n              subPath: o365relay.pem\n", "subPath"},
		{"cert outside mount", "sidecar/deployment.yaml", "value: /etc/o365relay/cert/o365relay.pem", "value: /etc/o365relay.pem", "not inside any volume mount"},
		{"cert key missing", "sidecar/deployment.yaml", "value: /etc/o365relay/cert/o365relay.pem", "value: /etc/o365relay/cert/tls.pem", `has no key "tls.pem"`},
		{"world-readable key", "central/statefulset.yaml", "defaultMode: 0400", "defaultMode: 0644", "defaultMode"},
		{"spool not mounted", "central/statefulset.yaml", "value: /var/spool/o365relay", "value: /data/spool", "not on a writable volume"},
		{"bad targetPort", "central/service.yaml", "targetPort: smtp", "targetPort: smtpx", "targetPort smtpx"},
		{"probe port", "central/statefulset.yaml", "port: admin", "port: metrics", `port "metrics"`},
		{"liveness on readyz", "central/statefulset.yaml", "          livenessProbe:\n            httpGet:\n              path: /healthz", "          livenessProbe:\n            httpGet:\n              path: /readyz", "liveness probe must be httpGet /healthz"},
		{"short grace", "central/statefulset.yaml", "terminationGracePeriodSeconds: 60", "terminationGracePeriodSeconds: 35", "must exceed"},
		{"service links", "sidecar/deployment.yaml", "enableServiceLinks: false", "enableServiceLinks: true", "enableServiceLinks"},
		{"writable root", "sidecar/deployment.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "readOnlyRootFilesystem"},
		{"capabilities", "central/statefulset.yaml", `drop: ["ALL"]`, `drop: ["NET_RAW"]`, "drop ALL"},
		{"not a native sidecar", "sidecar/deployment.yaml", "          restartPolicy: Always\n", "", "native sidecar"},
		{"selector mismatch", "sidecar/deployment.yaml", "  selector:\n    matchLabels:\n      app.kubernetes.io/name: example-app", "  selector:\n    matchLabels:\n      app.kubernetes.io/name: other-app", "does not match the pod template"},
		{"pdb selects nothing", "central/poddisruptionbudget.yaml", "      app.kubernetes.io/component: central", "      app.kubernetes.io/component: centrall", "matches no workload"},
		{"netpol port", "central/networkpolicy.yaml", "        - port: 2525", "        - port: 2526", "ingress port 2526"},
		{"bad except", "central/networkpolicy.yaml", "              - fc00::/7", "              - 10.0.0.0/8", "not inside ::/0"},
		{"headless", "central/service.yaml", "  clusterIP: None\n", "", "headless"},
		{"unlisted resource", "sidecar/kustomization.yaml", "  - deployment.yaml\n", "", "deployment.yaml is not listed"},
		{"example applied", "sidecar/kustomization.yaml", "  - deployment.yaml\n", "  - deployment.yaml\n  - secret.example.yaml\n", "example files are not to be applied"},
		{"webhook env", "workload-identity/configmap.yaml", "\ndata:\n", "\ndata:\n  AZURE_CLIENT_ID: \"x\"\n", "injected by the workload identity webhook"},
		{"no credential", "workload-identity/deployment.yaml", `        azure.workload.identity/use: "true"`, `        azure.workload.identity/use: "false"`, "relay has no credential"},
		{"missing SA", "workload-identity/deployment.yaml", "serviceAccountName: o365relay", "serviceAccountName: relay", `serviceAccountName "relay" is not defined`},
		{"namespace", "central/configmap.yaml", "  name: o365relay-central\n", "  name: o365relay-central\n  namespace: mail\n", "metadata.namespace"},
		// Rules that had no case of their own before the validator took the
		// relay's settings from its config package.
		{"secret in ConfigMap", "sidecar/configmap.yaml", `  O365RELAY_ACK: "spool"`, "  O365RELAY_ACK: \"spool\"\n  AZURE_CLIENT_SECRET: \"x\"", "AZURE_CLIENT_SECRET is a secret and does not belong in a ConfigMap"},
		{"literal secret", "sidecar/deployment.yaml", "            - name: GOMEMLIMIT\n", "            - name: AZURE_CLIENT_CERTIFICATE_PASSWORD\n              value: hunter2\n            - name: GOMEMLIMIT\n", "AZURE_CLIENT_CERTIFICATE_PASSWORD given as a literal value"},
		{"readiness on healthz", "central/statefulset.yaml", "              path: /readyz", "              path: /healthz", "readiness probe must be httpGet /readyz"},
		{"preStop exec", "central/statefulset.yaml", "              sleep:\n                seconds: 10", "              exec:\n                command: [\"sleep\", \"10\"]", "preStop exec cannot work"},
		{"writable cert mount", "central/statefulset.yaml", "              mountPath: /etc/o365relay/cert\n              readOnly: true\n", "              mountPath: /etc/o365relay/cert\n", "should be mounted readOnly"},
		{"cert not from a Secret", "central/statefulset.yaml", "          secret:\n            secretName: o365relay-cert\n            defaultMode: 0400", "          emptyDir: {}", "which is not a Secret"},
		{"no fsGroup", "central/statefulset.yaml", "        fsGroup: 65532\n", "", "set pod securityContext.fsGroup"},
		{"spool on a Secret", "sidecar/deployment.yaml", "            - name: spool\n              mountPath: /var/spool/o365relay", "            - name: cert\n              mountPath: /var/spool/o365relay", "neither an emptyDir nor a PersistentVolumeClaim"},
		{"uid 0", "sidecar/deployment.yaml", "            runAsUser: 65532", "            runAsUser: 0", "runs as uid 0"},
		{"root", "central/statefulset.yaml", "runAsNonRoot: true", "runAsNonRoot: false", "must run with runAsNonRoot"},
		{"escalation", "central/statefulset.yaml", "allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true", "needs allowPrivilegeEscalation: false"},
		{"privileged", "central/statefulset.yaml", "            allowPrivilegeEscalation: false\n", "            allowPrivilegeEscalation: false\n            privileged: true\n", "is privileged"},
		{"adds a capability", "central/statefulset.yaml", `drop: ["ALL"]`, "drop: [\"ALL\"]\n              add: [\"NET_BIND_SERVICE\"]", "adds capabilities"},
		{"seccomp", "central/statefulset.yaml", "            seccompProfile:\n              type: RuntimeDefault", "            seccompProfile:\n              type: Unconfined", "needs seccompProfile RuntimeDefault"},
		{"default service account", "workload-identity/deployment.yaml", "serviceAccountName: o365relay", "serviceAccountName: default", "needs a dedicated serviceAccountName"},
		{"no client-id annotation", "workload-identity/serviceaccount.yaml", "    azure.workload.identity/client-id: \"00000000-0000-0000-0000-000000000000\"\n", "", "lacks the azure.workload.identity/client-id annotation"},
		{"duplicate object", "central/service.yaml", "  name: o365relay-headless", "  name: o365relay", "also defined in"},
		{"no memory limit", "sidecar/deployment.yaml", "            limits:\n              memory: 64Mi\n", "", "needs a memory request and limit"},
		{"undefined volume", "central/statefulset.yaml", "            - name: spool\n              mountPath", "            - name: spoool\n              mountPath", `mounts undefined volume "spoool"`},
		{"unused image override", "central/kustomization.yaml", "  - name: ghcr.io/o365relay/o365relay", "  - name: ghcr.io/o365relay/relay", "matches no container image"},
		{"both disruption limits", "central/poddisruptionbudget.yaml", "  maxUnavailable: 1\n", "  maxUnavailable: 1\n  minAvailable: 1\n", "exactly one of minAvailable and maxUnavailable"},
		// Values are parsed by the relay's own parsers (config.Setting.Check):
		// what the relay refuses at start fails here, naming the variable.
		{"shutdown not positive", "central/configmap.yaml", `O365RELAY_SHUTDOWN_TIMEOUT: "30s"`, `O365RELAY_SHUTDOWN_TIMEOUT: "0s"`, `O365RELAY_SHUTDOWN_TIMEOUT: "0s" must be positive`},
		{"listen port out of range", "central/configmap.yaml", `O365RELAY_LISTEN: "0.0.0.0:2525"`, `O365RELAY_LISTEN: "0.0.0.0:99999"`, `O365RELAY_LISTEN: "0.0.0.0:99999": port "99999" is not a number`},
		{"spool dir empty", "central/statefulset.yaml", "              value: /var/spool/o365relay", `              value: ""`, "O365RELAY_SPOOL_DIR: must not be empty"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tr := mutate(t, base, tc.file, tc.old, tc.new)
			errs := tr.validate(t, path.Dir(tc.file))
			for _, err := range errs {
				if strings.Contains(err.Error(), tc.want) {
					return
				}
			}
			t.Errorf("no error containing %q; got %d errors:", tc.want, len(errs))
			for _, err := range errs {
				t.Log(err)
			}
		})
	}
}

// Every credential kind the relay accepts passes: a pod with a client
// secret from a Secret, or one that names a managed identity, has a
// credential (the validator once knew only the certificate and workload
// identity).
func TestOtherCredentialKinds(t *testing.T) {
	t.Parallel()
	base := loadTree(t)
	certEnv := "            - name: AZURE_CLIENT_CERTIFICATE_PATH\n              value: /etc/o365relay/cert/o365relay.pem\n"
	for name, env := range map[string]string{
		"client secret":    "            - name: AZURE_CLIENT_SECRET\n              valueFrom:\n                secretKeyRef: {name: o365relay-secret, key: client-secret}\n",
		"managed identity": "            - name: O365RELAY_CREDENTIAL\n              value: managed_identity\n",
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			tr := mutate(t, base, "sidecar/deployment.yaml", certEnv, env)
			for _, err := range tr.validate(t, "sidecar") {
				if strings.Contains(err.Error(), "credential") {
					t.Error(err)
				}
			}
		})
	}
}
