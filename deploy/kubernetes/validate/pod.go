package validate

import (
	"path"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	kvalidation "k8s.io/apimachinery/pkg/util/validation"
)

// The generic Kubernetes checks of a workload's pod template: selector,
// service account, volumes and claim templates, and each container's
// ports, environment references, mounts, probes and resources. The
// relay container's own rules are in relay.go.

func podSpec(o Object) *corev1.PodSpec {
	switch v := o.Obj.(type) {
	case *appsv1.Deployment:
		return &v.Spec.Template.Spec
	case *appsv1.StatefulSet:
		return &v.Spec.Template.Spec
	}
	return nil
}

func podLabels(o Object) map[string]string {
	switch v := o.Obj.(type) {
	case *appsv1.Deployment:
		return v.Spec.Template.Labels
	case *appsv1.StatefulSet:
		return v.Spec.Template.Labels
	}
	return nil
}

// eachContainer visits every container of every workload in the directory.
func (c *checker) eachContainer(f func(o Object, ctr *corev1.Container, spec *corev1.PodSpec, init bool)) {
	for _, o := range c.objs {
		spec := podSpec(o)
		if spec == nil {
			continue
		}
		for i := range spec.InitContainers {
			f(o, &spec.InitContainers[i], spec, true)
		}
		for i := range spec.Containers {
			f(o, &spec.Containers[i], spec, false)
		}
	}
}

// pod is a workload's pod template with what its containers may refer to.
type pod struct {
	tmpl    *corev1.PodTemplateSpec
	spec    *corev1.PodSpec
	volumes map[string]*corev1.Volume // by name
	claims  map[string]bool           // volumeClaimTemplates, by name
}

// volume reports whether name is a pod volume or a claim template.
func (p *pod) volume(name string) bool { return p.volumes[name] != nil || p.claims[name] }

func (c *checker) workload(o Object, selector *metav1.LabelSelector, tmpl *corev1.PodTemplateSpec, claims []corev1.PersistentVolumeClaim) {
	c.selector(o, selector, tmpl)
	c.labels(o, "spec.template.metadata.labels", tmpl.Labels)
	p := &pod{tmpl: tmpl, spec: &tmpl.Spec}
	if len(p.spec.Containers) == 0 {
		c.errorf(o, "no containers")
	}
	if sa := p.spec.ServiceAccountName; sa != "" {
		if _, ok := c.find("ServiceAccount", sa); !ok {
			c.errorf(o, "serviceAccountName %q is not defined", sa)
		}
	}
	p.volumes = c.podVolumes(o, p.spec.Volumes)
	p.claims = c.claimTemplates(o, claims, p.volumes)
	all := append(append([]corev1.Container{}, p.spec.InitContainers...), p.spec.Containers...)
	names := map[string]bool{}
	for i := range all {
		ctr := &all[i]
		if names[ctr.Name] {
			c.errorf(o, "container name %q used twice", ctr.Name)
		}
		names[ctr.Name] = true
		for _, msg := range kvalidation.IsDNS1123Label(ctr.Name) {
			c.errorf(o, "container name %q: %s", ctr.Name, msg)
		}
		if ctr.Image == "" {
			c.errorf(o, "container %q has no image", ctr.Name)
		}
		c.container(o, ctr, p)
	}
	for _, ctr := range p.spec.InitContainers {
		if isRelay(&ctr) && (ctr.RestartPolicy == nil || *ctr.RestartPolicy != corev1.ContainerRestartPolicyAlways) {
			c.errorf(o, "relay init container %q must be a native sidecar (restartPolicy: Always)", ctr.Name)
		}
	}
	for i := range all {
		if isRelay(&all[i]) {
			c.relay(o, &all[i], p)
		}
	}
}

// selector checks that the workload's selector selects its own pods, and
// not everything.
func (c *checker) selector(o Object, selector *metav1.LabelSelector, tmpl *corev1.PodTemplateSpec) {
	sel, err := metav1.LabelSelectorAsSelector(selector)
	switch {
	case selector == nil || err != nil:
		c.errorf(o, "spec.selector missing or invalid: %v", err)
	case sel.Empty():
		c.errorf(o, "spec.selector selects everything")
	case !sel.Matches(labels.Set(tmpl.Labels)):
		c.errorf(o, "spec.selector %q does not match the pod template labels %v", sel, tmpl.Labels)
	}
}

// podVolumes indexes the pod's volumes by name, checking that each is
// defined once and that the Secret or ConfigMap behind it exists.
func (c *checker) podVolumes(o Object, vols []corev1.Volume) map[string]*corev1.Volume {
	volumes := map[string]*corev1.Volume{}
	for i := range vols {
		v := &vols[i]
		if volumes[v.Name] != nil {
			c.errorf(o, "volume %q defined twice", v.Name)
		}
		volumes[v.Name] = v
		if v.Secret != nil {
			if _, ok := c.find("Secret", v.Secret.SecretName); !ok {
				c.errorf(o, "volume %q: Secret %q is not defined here or as an example", v.Name, v.Secret.SecretName)
			}
		}
		if v.ConfigMap != nil {
			if _, ok := c.find("ConfigMap", v.ConfigMap.Name); !ok {
				c.errorf(o, "volume %q: ConfigMap %q is not defined", v.Name, v.ConfigMap.Name)
			}
		}
	}
	return volumes
}

// claimTemplates returns the names of a StatefulSet's claim templates,
// checking that each asks for storage and an access mode and does not
// shadow a pod volume.
func (c *checker) claimTemplates(o Object, claims []corev1.PersistentVolumeClaim, volumes map[string]*corev1.Volume) map[string]bool {
	names := map[string]bool{}
	for _, pvc := range claims {
		names[pvc.Name] = true
		if volumes[pvc.Name] != nil {
			c.errorf(o, "volumeClaimTemplate %q shadows a pod volume", pvc.Name)
		}
		if _, ok := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; !ok {
			c.errorf(o, "volumeClaimTemplate %q has no storage request", pvc.Name)
		}
		if len(pvc.Spec.AccessModes) == 0 {
			c.errorf(o, "volumeClaimTemplate %q has no accessModes", pvc.Name)
		}
	}
	return names
}

// container makes the checks every container gets, relay or not.
func (c *checker) container(o Object, ctr *corev1.Container, p *pod) {
	ports := c.containerPorts(o, ctr)
	c.containerEnv(o, ctr)
	c.containerMounts(o, ctr, p)
	c.containerProbes(o, ctr, ports)
	if ctr.Resources.Requests.Memory().IsZero() || ctr.Resources.Limits.Memory().IsZero() {
		c.errorf(o, "container %q needs a memory request and limit", ctr.Name)
	}
	if ctr.Resources.Requests.Cpu().IsZero() {
		c.errorf(o, "container %q needs a CPU request", ctr.Name)
	}
}

// containerPorts checks the port numbers and names and returns the names.
func (c *checker) containerPorts(o Object, ctr *corev1.Container) map[string]bool {
	ports := map[string]bool{}
	for _, p := range ctr.Ports {
		if p.ContainerPort < 1 || p.ContainerPort > 65535 {
			c.errorf(o, "container %q port %d out of range", ctr.Name, p.ContainerPort)
		}
		if p.Name != "" {
			for _, msg := range kvalidation.IsValidPortName(p.Name) {
				c.errorf(o, "container %q port name %q: %s", ctr.Name, p.Name, msg)
			}
			ports[p.Name] = true
		}
	}
	return ports
}

// containerEnv checks the variable names and that envFrom sources exist.
func (c *checker) containerEnv(o Object, ctr *corev1.Container) {
	for _, env := range ctr.Env {
		for _, msg := range kvalidation.IsEnvVarName(env.Name) {
			c.errorf(o, "container %q env %q: %s", ctr.Name, env.Name, msg)
		}
	}
	for _, ef := range ctr.EnvFrom {
		if ef.ConfigMapRef != nil {
			if _, ok := c.find("ConfigMap", ef.ConfigMapRef.Name); !ok {
				c.errorf(o, "container %q envFrom ConfigMap %q is not defined", ctr.Name, ef.ConfigMapRef.Name)
			}
		}
		if ef.SecretRef != nil {
			if _, ok := c.find("Secret", ef.SecretRef.Name); !ok {
				c.errorf(o, "container %q envFrom Secret %q is not defined", ctr.Name, ef.SecretRef.Name)
			}
		}
	}
}

// containerMounts checks that every mount names a volume of the pod, at
// an absolute path used once.
func (c *checker) containerMounts(o Object, ctr *corev1.Container, p *pod) {
	mounts := map[string]bool{}
	for _, m := range ctr.VolumeMounts {
		if !p.volume(m.Name) {
			c.errorf(o, "container %q mounts undefined volume %q", ctr.Name, m.Name)
		}
		if !path.IsAbs(m.MountPath) {
			c.errorf(o, "container %q mountPath %q is not absolute", ctr.Name, m.MountPath)
		}
		if mounts[m.MountPath] {
			c.errorf(o, "container %q mounts %q twice", ctr.Name, m.MountPath)
		}
		mounts[m.MountPath] = true
	}
}

// containerProbes checks httpGet probes: an absolute path, and a named
// port the container has.
func (c *checker) containerProbes(o Object, ctr *corev1.Container, ports map[string]bool) {
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
	}{{"startupProbe", ctr.StartupProbe}, {"livenessProbe", ctr.LivenessProbe}, {"readinessProbe", ctr.ReadinessProbe}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			continue
		}
		g := p.probe.HTTPGet
		if !strings.HasPrefix(g.Path, "/") {
			c.errorf(o, "container %q %s path %q must start with /", ctr.Name, p.name, g.Path)
		}
		if g.Port.Type == intstr.String && !ports[g.Port.StrVal] {
			c.errorf(o, "container %q %s uses port %q, which the container does not name", ctr.Name, p.name, g.Port.StrVal)
		}
	}
}
