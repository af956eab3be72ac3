package validate

import (
	"fmt"
	"regexp"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// Kustomization is the part of kustomize.config.k8s.io/v1beta1 Kustomization
// the manifests use; anything else is rejected as unknown.
type Kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
	Images     []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
	} `json:"images,omitempty"`
}

// Monitor is the part of the Prometheus Operator's ServiceMonitor and
// PodMonitor the chart renders; strict decoding catches a misspelt field.
type Monitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []MonitorEndpoint    `json:"endpoints,omitempty"`
		Pod       []MonitorEndpoint    `json:"podMetricsEndpoints,omitempty"`
	} `json:"spec"`
}

// MonitorEndpoint is one scrape endpoint of a Monitor.
type MonitorEndpoint struct {
	Port        string `json:"port"`
	Path        string `json:"path"`
	Interval    string `json:"interval,omitempty"`
	Relabelings []struct {
		TargetLabel string `json:"targetLabel"`
		Replacement string `json:"replacement"`
	} `json:"relabelings,omitempty"`
}

// Object is one decoded document.
type Object struct {
	File string // path relative to the manifest root, e.g. "sidecar/deployment.yaml"
	Kind string
	Name string
	Obj  any // *appsv1.Deployment, *corev1.Service, *Kustomization, ...
}

func (o Object) String() string { return fmt.Sprintf("%s: %s/%s", o.File, o.Kind, o.Name) }

// newObject maps apiVersion+kind to the typed object to decode into. Only
// the kinds the deployment uses are known; anything else is an error rather
// than being passed unchecked.
func newObject(apiVersion, kind string) (any, error) {
	switch apiVersion + " " + kind {
	case "apps/v1 Deployment":
		return &appsv1.Deployment{}, nil
	case "apps/v1 StatefulSet":
		return &appsv1.StatefulSet{}, nil
	case "v1 Service":
		return &corev1.Service{}, nil
	case "v1 ServiceAccount":
		return &corev1.ServiceAccount{}, nil
	case "v1 Secret":
		return &corev1.Secret{}, nil
	case "v1 ConfigMap":
		return &corev1.ConfigMap{}, nil
	case "networking.k8s.io/v1 NetworkPolicy":
		return &networkingv1.NetworkPolicy{}, nil
	case "policy/v1 PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, nil
	case "kustomize.config.k8s.io/v1beta1 Kustomization":
		return &Kustomization{}, nil
	case "monitoring.coreos.com/v1 ServiceMonitor", "monitoring.coreos.com/v1 PodMonitor":
		return &Monitor{}, nil
	}
	return nil, fmt.Errorf("unknown apiVersion/kind %q %q (add it to newObject if it is intended)", apiVersion, kind)
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// Decode splits a file into YAML documents and decodes each strictly.
func Decode(file string, data []byte) ([]Object, []error) {
	var objs []Object
	var errs []error
	for i, doc := range docSeparator.Split(string(data), -1) {
		if isBlank(doc) {
			continue
		}
		o, err := decodeDoc(file, fmt.Sprintf("%s[doc %d]", file, i), []byte(doc))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		objs = append(objs, o)
	}
	return objs, errs
}

// decodeDoc decodes one document into the type its apiVersion and kind
// name; where says which document for errors.
func decodeDoc(file, where string, doc []byte) (Object, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return Object{}, fmt.Errorf("%s: %w", where, err)
	}
	obj, err := newObject(tm.APIVersion, tm.Kind)
	if err != nil {
		return Object{}, fmt.Errorf("%s: %w", where, err)
	}
	// UnmarshalStrict: duplicate keys and fields the type does not have
	// are errors (json.Decoder.DisallowUnknownFields underneath).
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		return Object{}, fmt.Errorf("%s (%s): %w", where, tm.Kind, err)
	}
	name := ""
	if m, ok := obj.(metav1.Object); ok {
		name = m.GetName()
	}
	return Object{File: file, Kind: tm.Kind, Name: name, Obj: obj}, nil
}

func isBlank(doc string) bool {
	for _, line := range strings.Split(doc, "\n") {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "#") {
			return false
		}
	}
	return true
}
