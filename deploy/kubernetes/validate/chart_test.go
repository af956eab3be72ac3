package validate

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// The Helm chart (deploy/helm/o365relay) is the one definition of the
// relay container. deploy/check.sh renders it with helm into the directory
// named by O365RELAY_CHART_RENDER:
//
//	central.yaml    helm template with ci/test-values.yaml
//	wi.yaml         with ci/workload-identity-values.yaml (and the monitors)
//	snippet.yaml    --set sidecarSnippet=true (the README's sidecar snippet)
//	snippet-wi.yaml the same with workload identity
//
// These tests check what it rendered with the same rules as the manifests,
// and that the manifests' relay containers, the README snippet and the
// image reference agree with it. Without the variable (no helm run) they
// are skipped.
func chartRender(t *testing.T) string {
	dir := os.Getenv("O365RELAY_CHART_RENDER")
	if dir == "" {
		t.Skip("O365RELAY_CHART_RENDER not set: run deploy/check.sh to render the chart")
	}
	return dir
}

func readRender(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(chartRender(t), name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The rendered chart passes every rule the manifests pass.
func TestChartRendered(t *testing.T) {
	tr := loadTree(t)
	for _, name := range []string{"central.yaml", "wi.yaml"} {
		errs := Dir("chart", map[string][]byte{"chart/" + name: readRender(t, name)}, tr.examples(t))
		for _, err := range errs {
			t.Errorf("%s: %v", name, err)
		}
	}
	// The monitors are there when enabled, and pass deploy/prometheus's
	// checks with the operator's own types (scrape the admin port's
	// /metrics, job="o365relay" for the alert rules).
	wi := readRender(t, "wi.yaml")
	objs, errs := Decode("chart/wi.yaml", wi)
	for _, err := range errs {
		t.Fatal(err)
	}
	monitors := map[string][]byte{}
	for i, doc := range docSeparator.Split(string(wi), -1) {
		if strings.Contains(doc, "\nkind: ServiceMonitor") || strings.Contains(doc, "\nkind: PodMonitor") {
			monitors[fmt.Sprintf("chart/wi.yaml[doc %d]", i)] = []byte(doc)
		}
	}
	if len(monitors) != 2 {
		t.Fatalf("wi.yaml has %d monitors, want a ServiceMonitor and a PodMonitor", len(monitors))
	}
	rules, err := os.ReadFile("../../prometheus/o365relay.rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range Monitoring(monitors, rules, objs) {
		t.Error(err)
	}
}

// snippetBody is the snippet as a user pastes it: helm's document header
// removed.
func snippetBody(b []byte) string {
	s := strings.TrimPrefix(string(b), "---\n")
	s = regexp.MustCompile(`(?m)\A# Source: .*\n`).ReplaceAllString(s, "")
	return s
}

func snippetSpec(t *testing.T, name string) *corev1.PodSpec {
	t.Helper()
	var spec corev1.PodSpec
	if err := yaml.UnmarshalStrict([]byte(snippetBody(readRender(t, name))), &spec); err != nil {
		t.Fatalf("%s is not a strict PodSpec fragment: %v", name, err)
	}
	return &spec
}

// relayOf returns the relay container of a pod spec.
func relayOf(t *testing.T, where string, spec *corev1.PodSpec) corev1.Container {
	t.Helper()
	for _, c := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
		if isRelay(&c) {
			return normalize(c)
		}
	}
	t.Fatalf("%s has no relay container", where)
	return corev1.Container{}
}

// normalize drops what legitimately differs between the chart and an
// example: the image tag, the ConfigMap's name, a default pull policy.
func normalize(c corev1.Container) corev1.Container {
	c = *c.DeepCopy()
	c.Image = imageName(c.Image)
	for i := range c.EnvFrom {
		if c.EnvFrom[i].ConfigMapRef != nil {
			c.EnvFrom[i].ConfigMapRef.Name = "<configmap>"
		}
	}
	if c.ImagePullPolicy == corev1.PullIfNotPresent {
		c.ImagePullPolicy = ""
	}
	return c
}

func exampleSpec(t *testing.T, tr tree, file string) *corev1.PodSpec {
	t.Helper()
	objs, errs := Decode(file, tr[file])
	for _, err := range errs {
		t.Fatal(err)
	}
	for _, o := range objs {
		if s := podSpec(o); s != nil {
			return s
		}
	}
	t.Fatalf("%s has no workload", file)
	return nil
}

func chartSpec(t *testing.T, name string) *corev1.PodSpec {
	t.Helper()
	objs, errs := Decode(name, readRender(t, name))
	for _, err := range errs {
		t.Fatal(err)
	}
	for _, o := range objs {
		if s, ok := o.Obj.(*appsv1.StatefulSet); ok {
			return &s.Spec.Template.Spec
		}
	}
	t.Fatalf("%s has no StatefulSet", name)
	return nil
}

// Every example's relay container is the chart's, field for field, and
// so are the certificate and spool volumes: the examples cannot drift from
// the one definition.
func TestExamplesMatchChart(t *testing.T) {
	tr := loadTree(t)
	for _, tc := range []struct{ example, render string }{
		{"central/statefulset.yaml", "central.yaml"},
		{"sidecar/deployment.yaml", "snippet.yaml"},
		{"workload-identity/deployment.yaml", "snippet-wi.yaml"},
	} {
		ex := exampleSpec(t, tr, tc.example)
		var ch *corev1.PodSpec
		if strings.HasPrefix(tc.render, "snippet") {
			ch = snippetSpec(t, tc.render)
		} else {
			ch = chartSpec(t, tc.render)
		}
		got, want := relayOf(t, tc.example, ex), relayOf(t, tc.render, ch)
		if !reflect.DeepEqual(got, want) {
			a, _ := yaml.Marshal(got)
			b, _ := yaml.Marshal(want)
			t.Errorf("%s: the relay container differs from the chart's (%s):\n--- example\n%s\n--- chart\n%s", tc.example, tc.render, a, b)
		}
		for _, v := range ch.Volumes {
			found := false
			for _, w := range ex.Volumes {
				if w.Name == v.Name {
					found = true
					if !reflect.DeepEqual(v, w) {
						t.Errorf("%s: volume %q differs from the chart's (%s): %+v vs %+v", tc.example, v.Name, tc.render, w, v)
					}
				}
			}
			if !found && !strings.HasPrefix(tc.example, "central/") {
				t.Errorf("%s lacks the chart's volume %q", tc.example, v.Name)
			}
		}
	}
}

// The README's sidecar snippet is the rendered one. Regenerate with
// UPDATE_SNIPPET=1 bash deploy/check.sh.
func TestReadmeSnippet(t *testing.T) {
	want := snippetBody(readRender(t, "snippet.yaml"))
	const begin, end = "<!-- BEGIN SIDECAR SNIPPET (generated from deploy/helm/o365relay: UPDATE_SNIPPET=1 bash deploy/check.sh) -->\n```yaml\n", "```\n<!-- END SIDECAR SNIPPET -->"
	path := "../../../README.md"
	readme, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := string(readme)
	i, j := strings.Index(s, begin), strings.Index(s, end)
	if i < 0 || j < i {
		t.Fatalf("README.md has no %q ... %q block", begin, end)
	}
	if got := s[i+len(begin) : j]; got != want {
		if os.Getenv("UPDATE_SNIPPET") != "" {
			if err := os.WriteFile(path, []byte(s[:i+len(begin)]+want+s[j:]), 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		t.Errorf("README.md's sidecar snippet is not the chart's; run UPDATE_SNIPPET=1 bash deploy/check.sh")
	}
}

// One image reference: the chart's image.repository is the image of every
// example and of the Makefile.
func TestOneImageReference(t *testing.T) {
	var values struct {
		Image struct {
			Repository string `json:"repository"`
		} `json:"image"`
	}
	b, err := os.ReadFile("../../helm/o365relay/values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &values); err != nil {
		t.Fatal(err)
	}
	repo := values.Image.Repository
	if repo == "" {
		t.Fatal("values.yaml has no image.repository")
	}
	tr := loadTree(t)
	for f, data := range tr {
		objs, _ := Decode(f, data)
		for _, o := range objs {
			if k, ok := o.Obj.(*Kustomization); ok {
				for _, img := range k.Images {
					if img.Name != repo && strings.HasSuffix(img.Name, "o365relay") {
						t.Errorf("%s: kustomize image %q, the chart's is %q", f, img.Name, repo)
					}
				}
			}
			if spec := podSpec(o); spec != nil {
				for _, c := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
					if isRelay(&c) && imageName(c.Image) != repo {
						t.Errorf("%s: relay image %q, the chart's is %q", f, c.Image, repo)
					}
				}
			}
		}
	}
	mk, err := os.ReadFile("../../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(mk), "deploy/helm/o365relay/values.yaml") {
		t.Error("the Makefile does not take IMAGE from the chart's values.yaml")
	}
}
