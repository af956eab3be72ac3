package validate

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

// Monitoring checks the prometheus-operator manifests of deploy/prometheus:
// each decodes strictly into the operator's monitoring.coreos.com/v1 types;
// the PrometheusRule's groups are exactly those of the plain rules file
// (rulesFile, o365relay.rules.yml); every PodMonitor and ServiceMonitor
// scrapes /metrics on a port named "admin" that a relay container (or a
// Service in front of one) in workloads actually has, and sets the job
// label the alert rules expect.
func Monitoring(files map[string][]byte, rulesFile []byte, workloads []Object) []error {
	var errs []error
	errorf := func(file, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", file, fmt.Sprintf(format, args...)))
	}
	var want struct {
		Groups []monitoringv1.RuleGroup `json:"groups"`
	}
	if err := yaml.UnmarshalStrict(rulesFile, &want); err != nil {
		errs = append(errs, fmt.Errorf("rules file: %w", err))
	}
	for file, data := range files {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(data, &tm); err != nil {
			errorf(file, "%v", err)
			continue
		}
		switch tm.Kind {
		case "PrometheusRule":
			var pr monitoringv1.PrometheusRule
			if err := yaml.UnmarshalStrict(data, &pr); err != nil {
				errorf(file, "%v", err)
				continue
			}
			if !reflect.DeepEqual(normalise(pr.Spec.Groups), normalise(want.Groups)) {
				errorf(file, "spec.groups differs from the rules file: keep them identical")
			}
		case "PodMonitor":
			var pm monitoringv1.PodMonitor
			if err := yaml.UnmarshalStrict(data, &pm); err != nil {
				errorf(file, "%v", err)
				continue
			}
			sel, err := metav1.LabelSelectorAsSelector(&pm.Spec.Selector)
			if err != nil {
				errorf(file, "selector: %v", err)
				continue
			}
			found := false
			for _, w := range workloads {
				spec, lbls := podSpec(w), podLabels(w)
				if spec == nil || !sel.Matches(labels.Set(lbls)) {
					continue
				}
				for _, ctr := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
					if isRelay(&ctr) && hasPort(ctr.Ports, "admin") {
						found = true
					}
				}
			}
			if !found {
				errorf(file, "selector %v matches no pod with a relay container port named admin", sel)
			}
			for _, ep := range pm.Spec.PodMetricsEndpoints {
				checkEndpoint(file, ptrString(ep.Port), ep.Path, ep.RelabelConfigs, errorf)
			}
		case "ServiceMonitor":
			var sm monitoringv1.ServiceMonitor
			if err := yaml.UnmarshalStrict(data, &sm); err != nil {
				errorf(file, "%v", err)
				continue
			}
			sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
			if err != nil {
				errorf(file, "selector: %v", err)
				continue
			}
			found := false
			for _, w := range workloads {
				if s, ok := w.Obj.(*corev1.Service); ok && sel.Matches(labels.Set(s.Labels)) {
					for _, p := range s.Spec.Ports {
						found = found || p.Name == "admin"
					}
				}
			}
			if !found {
				errorf(file, "selector %v matches no Service with a port named admin", sel)
			}
			for _, ep := range sm.Spec.Endpoints {
				checkEndpoint(file, ep.Port, ep.Path, ep.RelabelConfigs, errorf)
			}
		default:
			errorf(file, "unexpected kind %q", tm.Kind)
		}
	}
	return errs
}

func checkEndpoint(file, port, path string, relabel []monitoringv1.RelabelConfig, errorf func(string, string, ...any)) {
	if port != "admin" || path != "/metrics" {
		errorf(file, "endpoint port %q path %q, want the admin port and /metrics", port, path)
	}
	for _, r := range relabel {
		if r.TargetLabel == "job" && r.Replacement != nil && *r.Replacement == "o365relay" {
			return
		}
	}
	errorf(file, `endpoint does not set job="o365relay", which the alert rules expect`)
}

func hasPort(ports []corev1.ContainerPort, name string) bool {
	for _, p := range ports {
		if p.Name == name {
			return true
		}
	}
	return false
}

func ptrString(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// normalise compares rule groups by their JSON form (durations and
// IntOrString spelled alike).
func normalise(gs []monitoringv1.RuleGroup) string {
	b, err := json.Marshal(gs)
	if err != nil {
		return "unmarshalable: " + err.Error()
	}
	return strings.TrimSpace(string(b))
}
