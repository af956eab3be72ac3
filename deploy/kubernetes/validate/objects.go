package validate

import (
	"net/netip"
	"path"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	kvalidation "k8s.io/apimachinery/pkg/util/validation"
)

// The generic Kubernetes checks of objects other than pods: names, labels,
// the kustomization, and the references of Services, NetworkPolicies,
// PodDisruptionBudgets and StatefulSets to the workloads and Services they
// name.

func (c *checker) meta(o Object, m metav1.Object) {
	if m.GetName() == "" {
		c.errorf(o, "metadata.name is empty")
	} else {
		for _, msg := range kvalidation.IsDNS1123Subdomain(m.GetName()) {
			c.errorf(o, "metadata.name: %s", msg)
		}
	}
	if m.GetNamespace() != "" {
		// The manifests are applied with -n; a hard-coded namespace would
		// also break the workload identity subject.
		c.errorf(o, "metadata.namespace is set; apply with -n instead")
	}
	c.labels(o, "metadata.labels", m.GetLabels())
	for k := range m.GetAnnotations() {
		for _, msg := range kvalidation.IsQualifiedName(k) {
			c.errorf(o, "annotation key %q: %s", k, msg)
		}
	}
}

func (c *checker) labels(o Object, where string, l map[string]string) {
	for k, v := range l {
		for _, msg := range kvalidation.IsQualifiedName(k) {
			c.errorf(o, "%s key %q: %s", where, k, msg)
		}
		for _, msg := range kvalidation.IsValidLabelValue(v) {
			c.errorf(o, "%s[%q]=%q: %s", where, k, v, msg)
		}
	}
}

// kustomization checks that the resources are exactly the directory's
// manifests (no example file) and that every image override is used.
func (c *checker) kustomization(o Object, k *Kustomization) {
	if path.Base(o.File) != "kustomization.yaml" {
		c.errorf(o, "a Kustomization must be in kustomization.yaml")
	}
	want := map[string]bool{}
	for _, f := range c.files {
		if path.Dir(f) == c.dir && path.Base(f) != "kustomization.yaml" && !strings.HasSuffix(f, ".example.yaml") {
			want[path.Base(f)] = true
		}
	}
	for _, r := range k.Resources {
		if !want[r] {
			c.errorf(o, "resource %q is not a manifest in %s (example files are not to be applied)", r, c.dir)
		}
		delete(want, r)
	}
	for f := range want {
		c.errorf(o, "%s is not listed in resources", f)
	}
	for _, img := range k.Images {
		used := false
		c.eachContainer(func(_ Object, ctr *corev1.Container, _ *corev1.PodSpec, _ bool) {
			if imageName(ctr.Image) == img.Name {
				used = true
			}
		})
		if !used {
			c.errorf(o, "images[%q] matches no container image", img.Name)
		}
	}
}

// imageName is an image reference without its tag.
func imageName(image string) string {
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		return image[:i]
	}
	return image
}

func (c *checker) statefulSet(o Object, s *appsv1.StatefulSet) {
	so, ok := c.find("Service", s.Spec.ServiceName)
	if !ok {
		c.errorf(o, "serviceName %q is not a Service here", s.Spec.ServiceName)
		return
	}
	if so.Obj.(*corev1.Service).Spec.ClusterIP != corev1.ClusterIPNone {
		c.errorf(o, "serviceName %q must be a headless Service (clusterIP: None)", s.Spec.ServiceName)
	}
	if len(s.Spec.VolumeClaimTemplates) == 0 {
		c.errorf(o, "a StatefulSet relay needs volumeClaimTemplates for its spool")
	}
}

// containerPort reports whether some container of the workload exposes
// the port (by name or number).
func containerPort(w Object, port intstr.IntOrString) bool {
	spec := podSpec(w)
	for _, ctrs := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
		for _, ctr := range ctrs {
			for _, p := range ctr.Ports {
				if (port.Type == intstr.String && p.Name == port.StrVal) || (port.Type == intstr.Int && p.ContainerPort == port.IntVal) {
					return true
				}
			}
		}
	}
	return false
}

func (c *checker) service(o Object, s *corev1.Service) {
	if len(s.Spec.Selector) == 0 {
		c.errorf(o, "Service without selector")
		return
	}
	ws := c.selected(labels.SelectorFromSet(s.Spec.Selector))
	if len(ws) == 0 {
		c.errorf(o, "selector %v matches no workload", s.Spec.Selector)
	}
	if len(s.Spec.Ports) == 0 {
		c.errorf(o, "Service without ports")
	}
	for _, p := range s.Spec.Ports {
		if len(s.Spec.Ports) > 1 && p.Name == "" {
			c.errorf(o, "port %d needs a name (Service has several)", p.Port)
		}
		target := p.TargetPort
		if target.Type == intstr.Int && target.IntVal == 0 {
			target = intstr.FromInt32(p.Port)
		}
		for _, w := range ws {
			if !containerPort(w, target) {
				c.errorf(o, "targetPort %s is not a container port of %s", target.String(), w)
			}
		}
	}
}

func (c *checker) networkPolicy(o Object, np *networkingv1.NetworkPolicy) {
	sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil {
		c.errorf(o, "podSelector: %v", err)
		return
	}
	ws := c.selected(sel)
	if len(ws) == 0 {
		c.errorf(o, "podSelector %q matches no workload", sel)
	}
	for _, r := range np.Spec.Ingress {
		// Ingress ports are the selected pods' own: they must exist.
		c.policyPorts(o, "ingress", r.Ports, ws)
		for _, peer := range r.From {
			c.peer(o, peer)
		}
	}
	for _, r := range np.Spec.Egress {
		// Egress ports are the peers', which are not in these manifests.
		for _, peer := range r.To {
			c.peer(o, peer)
		}
	}
}

// policyPorts checks that every numbered or named port of a rule is a
// container port of each selected workload.
func (c *checker) policyPorts(o Object, dir string, ports []networkingv1.NetworkPolicyPort, ws []Object) {
	for _, p := range ports {
		if p.Port == nil {
			continue
		}
		for _, w := range ws {
			if !containerPort(w, *p.Port) {
				c.errorf(o, "%s port %s is not a container port of %s", dir, p.Port.String(), w)
			}
		}
	}
}

func (c *checker) peer(o Object, peer networkingv1.NetworkPolicyPeer) {
	if peer.IPBlock == nil {
		return
	}
	p, err := netip.ParsePrefix(peer.IPBlock.CIDR)
	if err != nil {
		c.errorf(o, "ipBlock %q: %v", peer.IPBlock.CIDR, err)
		return
	}
	for _, e := range peer.IPBlock.Except {
		ep, err := netip.ParsePrefix(e)
		if err != nil {
			c.errorf(o, "ipBlock except %q: %v", e, err)
			continue
		}
		if !p.Contains(ep.Addr()) || ep.Bits() < p.Bits() {
			c.errorf(o, "ipBlock except %s is not inside %s (the API server rejects that)", e, p)
		}
	}
}

func (c *checker) pdb(o Object, p *policyv1.PodDisruptionBudget) {
	sel, err := metav1.LabelSelectorAsSelector(p.Spec.Selector)
	if p.Spec.Selector == nil || err != nil {
		c.errorf(o, "selector missing or invalid: %v", err)
		return
	}
	if len(c.selected(sel)) == 0 {
		c.errorf(o, "selector %q matches no workload", sel)
	}
	if (p.Spec.MinAvailable == nil) == (p.Spec.MaxUnavailable == nil) {
		c.errorf(o, "set exactly one of minAvailable and maxUnavailable")
	}
}
