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
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// The monitoring objects: a scrape reaches the relay's /metrics (pathMetrics)
// on the port named adminPort and labels it job="o365relay" (scrapeJob),
// which the alert rules of deploy/prometheus select on.
const (
	adminPort = "admin"
	scrapeJob = "o365relay"
)

// Monitoring checks the prometheus-operator manifests of deploy/prometheus:
// each decodes strictly into the operator's monitoring.coreos.com/v1 types;
// the PrometheusRule's groups are exactly those of the plain rules file
// (rulesFile, o365relay.rules.yml); every PodMonitor and ServiceMonitor
// scrapes /metrics on a port named "admin" that a relay container (or a
// Service in front of one) in workloads actually has, and sets the job
// label the alert rules expect.
func Monitoring(files map[string][]byte, rulesFile []byte, workloads []Object) []error {
	m := &monitoring{workloads: workloads}
	if err := yaml.UnmarshalStrict(rulesFile, &m.want); err != nil {
		m.errs = append(m.errs, fmt.Errorf("rules file: %w", err))
	}
	for file, data := range files {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(data, &tm); err != nil {
			m.errorf(file, "%v", err)
			continue
		}
		switch tm.Kind {
		case "PrometheusRule":
			m.prometheusRule(file, data)
		case "PodMonitor":
			m.podMonitor(file, data)
		case "ServiceMonitor":
			m.serviceMonitor(file, data)
		default:
			m.errorf(file, "unexpected kind %q", tm.Kind)
		}
	}
	return m.errs
}

// monitoring collects Monitoring's errors.
type monitoring struct {
	want struct {
		Groups []monitoringv1.RuleGroup `json:"groups"`
	}
	workloads []Object
	errs      []error
}

func (m *monitoring) errorf(file, format string, args ...any) {
	m.errs = append(m.errs, fmt.Errorf("%s: %s", file, fmt.Sprintf(format, args...)))
}

func (m *monitoring) prometheusRule(file string, data []byte) {
	var pr monitoringv1.PrometheusRule
	if err := yaml.UnmarshalStrict(data, &pr); err != nil {
		m.errorf(file, "%v", err)
		return
	}
	if !reflect.DeepEqual(normalise(pr.Spec.Groups), normalise(m.want.Groups)) {
		m.errorf(file, "spec.groups differs from the rules file: keep them identical")
	}
}

func (m *monitoring) podMonitor(file string, data []byte) {
	var pm monitoringv1.PodMonitor
	if err := yaml.UnmarshalStrict(data, &pm); err != nil {
		m.errorf(file, "%v", err)
		return
	}
	sel, err := metav1.LabelSelectorAsSelector(&pm.Spec.Selector)
	if err != nil {
		m.errorf(file, "selector: %v", err)
		return
	}
	found := false
	for _, w := range m.workloads {
		spec, lbls := podSpec(w), podLabels(w)
		if spec == nil || !sel.Matches(labels.Set(lbls)) {
			continue
		}
		for _, ctr := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
			if isRelay(&ctr) && hasPort(ctr.Ports, adminPort) {
				found = true
			}
		}
	}
	if !found {
		m.errorf(file, "selector %v matches no pod with a relay container port named %s", sel, adminPort)
	}
	for _, ep := range pm.Spec.PodMetricsEndpoints {
		m.endpoint(file, ptrString(ep.Port), ep.Path, ep.RelabelConfigs)
	}
}

func (m *monitoring) serviceMonitor(file string, data []byte) {
	var sm monitoringv1.ServiceMonitor
	if err := yaml.UnmarshalStrict(data, &sm); err != nil {
		m.errorf(file, "%v", err)
		return
	}
	sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
	if err != nil {
		m.errorf(file, "selector: %v", err)
		return
	}
	found := false
	for _, w := range m.workloads {
		if s, ok := w.Obj.(*corev1.Service); ok && sel.Matches(labels.Set(s.Labels)) {
			for _, p := range s.Spec.Ports {
				found = found || p.Name == adminPort
			}
		}
	}
	if !found {
		m.errorf(file, "selector %v matches no Service with a port named %s", sel, adminPort)
	}
	for _, ep := range sm.Spec.Endpoints {
		m.endpoint(file, ep.Port, ep.Path, ep.RelabelConfigs)
	}
}

func (m *monitoring) endpoint(file, port, path string, relabel []monitoringv1.RelabelConfig) {
	if port != adminPort || path != pathMetrics {
		m.errorf(file, "endpoint port %q path %q, want the %s port and %s", port, path, adminPort, pathMetrics)
	}
	for _, r := range relabel {
		if r.TargetLabel == "job" && r.Replacement != nil && *r.Replacement == scrapeJob {
			return
		}
	}
	m.errorf(file, "%s", errNoJob)
}

// errNoJob is the error of an endpoint without the job label.
const errNoJob = `endpoint does not set job="` + scrapeJob + `", which the alert rules expect`

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

// monitor checks, within a deployment directory, that a ServiceMonitor
// selects a Service with the port, or a PodMonitor pods whose containers
// name it, and that each endpoint scrapes the relay's metrics with the job
// label the alert rules expect.
func (c *checker) monitor(o Object, m *Monitor) {
	sel, err := metav1.LabelSelectorAsSelector(&m.Spec.Selector)
	if err != nil || sel.Empty() {
		c.errorf(o, "spec.selector missing or selects everything")
		return
	}
	eps := append(append([]MonitorEndpoint{}, m.Spec.Endpoints...), m.Spec.Pod...)
	if len(eps) == 0 {
		c.errorf(o, "no endpoints")
	}
	for _, ep := range eps {
		if !c.monitorPort(o.Kind, sel, ep.Port) {
			c.errorf(o, "endpoint port %q is not a port of what it selects", ep.Port)
		}
		if ep.Path != pathMetrics {
			c.errorf(o, "endpoint path %q: the relay serves %s", ep.Path, pathMetrics)
		}
		job := false
		for _, r := range ep.Relabelings {
			job = job || (r.TargetLabel == "job" && r.Replacement == scrapeJob)
		}
		if !job {
			c.errorf(o, "%s", errNoJob)
		}
	}
}

// monitorPort reports whether what a monitor of kind selects has the port:
// a Service's port name, or a selected pod's container port name.
func (c *checker) monitorPort(kind string, sel labels.Selector, port string) bool {
	if kind != "ServiceMonitor" {
		for _, w := range c.selected(sel) {
			if containerPort(w, intstr.FromString(port)) {
				return true
			}
		}
		return false
	}
	for _, so := range c.objs {
		if s, ok := so.Obj.(*corev1.Service); ok && sel.Matches(labels.Set(s.Labels)) {
			for _, p := range s.Spec.Ports {
				if p.Name == port {
					return true
				}
			}
		}
	}
	return false
}
