// Package validate checks the Kubernetes manifests under deploy/kubernetes
// offline, without a cluster and without downloading JSON schemas.
//
// It owns two layers of checking:
//
//  1. Schema: every YAML document is decoded strictly into the typed
//     k8s.io/api object for its apiVersion/kind (unknown fields, duplicate
//     keys and wrong types are errors) - the same structs the API server
//     decodes into, so a misspelt field that kubectl would only warn about, or
//     that a server would silently drop, fails here.
//  2. Consistency: the cross-object facts the API server does not check but
//     a working deployment needs - selectors that select, named ports and
//     volumes that exist, ConfigMaps, Secrets and ServiceAccounts that are
//     defined - plus o365relay's own rules: a non-loopback SMTP listener
//     needs an explicit O365RELAY_ALLOWED_NETWORKS of valid CIDRs, httpGet
//     probes need an admin listener on the pod address, the certificate path
//     lies inside a Secret volume (not a subPath: those never see updates),
//     the spool is a writable volume, and the relay container runs hardened.
//
// It lives in its own Go module so the relay's module never takes the
// k8s.io dependencies.
package validate

import (
	"fmt"
	"net/netip"
	"path"
	"regexp"
	"sort"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	kvalidation "k8s.io/apimachinery/pkg/util/validation"
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
		where := fmt.Sprintf("%s[doc %d]", file, i)
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
			continue
		}
		obj, err := newObject(tm.APIVersion, tm.Kind)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
			continue
		}
		// UnmarshalStrict: duplicate keys and fields the type does not have
		// are errors (json.Decoder.DisallowUnknownFields underneath).
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			errs = append(errs, fmt.Errorf("%s (%s): %w", where, tm.Kind, err))
			continue
		}
		name := ""
		if m, ok := obj.(metav1.Object); ok {
			name = m.GetName()
		}
		objs = append(objs, Object{File: file, Kind: tm.Kind, Name: name, Obj: obj})
	}
	return objs, errs
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

// Dir validates the manifests of one deployment directory (one kustomization):
// files maps a file name relative to the manifest root to its contents. All
// references are resolved within the directory, plus the shared objects
// given in extra (e.g. the example Secret of another directory).
func Dir(dir string, files map[string][]byte, extra []Object) []error {
	var objs []Object
	var errs []error
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		o, e := Decode(name, files[name])
		objs = append(objs, o...)
		errs = append(errs, e...)
	}
	c := &checker{dir: dir, files: names, objs: objs, all: append(append([]Object{}, objs...), extra...)}
	c.run()
	return append(errs, c.errs...)
}

type checker struct {
	dir   string
	files []string
	objs  []Object // this directory's
	all   []Object // plus extra, for reference lookups
	errs  []error
}

func (c *checker) errorf(o Object, format string, args ...any) {
	c.errs = append(c.errs, fmt.Errorf("%s: %s", o, fmt.Sprintf(format, args...)))
}

func (c *checker) run() {
	if len(c.objs) == 0 {
		c.errs = append(c.errs, fmt.Errorf("%s: no Kubernetes objects", c.dir))
	}
	seen := map[string]Object{}
	for _, o := range c.objs {
		if k, ok := o.Obj.(*Kustomization); ok {
			c.kustomization(o, k)
			continue
		}
		key := o.Kind + "/" + o.Name
		if prev, dup := seen[key]; dup {
			c.errorf(o, "also defined in %s", prev.File)
		}
		seen[key] = o
		c.meta(o, o.Obj.(metav1.Object))
		switch v := o.Obj.(type) {
		case *appsv1.Deployment:
			c.workload(o, v.Spec.Selector, &v.Spec.Template, nil)
		case *appsv1.StatefulSet:
			c.workload(o, v.Spec.Selector, &v.Spec.Template, v.Spec.VolumeClaimTemplates)
			c.statefulSet(o, v)
		case *corev1.Service:
			c.service(o, v)
		case *networkingv1.NetworkPolicy:
			c.networkPolicy(o, v)
		case *policyv1.PodDisruptionBudget:
			c.pdb(o, v)
		case *corev1.ConfigMap:
			c.configMap(o, v)
		case *Monitor:
			c.monitor(o, v)
		case *corev1.Secret, *corev1.ServiceAccount:
		}
	}
}

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

func imageName(image string) string {
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		return image[:i]
	}
	return image
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

// selected returns the workloads in the directory whose pod labels match.
func (c *checker) selected(sel labels.Selector) []Object {
	var out []Object
	for _, o := range c.objs {
		if l := podLabels(o); l != nil && sel.Matches(labels.Set(l)) {
			out = append(out, o)
		}
	}
	return out
}

func (c *checker) find(kind, name string) (Object, bool) {
	for _, o := range c.all {
		if o.Kind == kind && o.Name == name {
			return o, true
		}
	}
	return Object{}, false
}

func (c *checker) workload(o Object, selector *metav1.LabelSelector, tmpl *corev1.PodTemplateSpec, claims []corev1.PersistentVolumeClaim) {
	sel, err := metav1.LabelSelectorAsSelector(selector)
	switch {
	case selector == nil || err != nil:
		c.errorf(o, "spec.selector missing or invalid: %v", err)
	case sel.Empty():
		c.errorf(o, "spec.selector selects everything")
	case !sel.Matches(labels.Set(tmpl.Labels)):
		c.errorf(o, "spec.selector %q does not match the pod template labels %v", sel, tmpl.Labels)
	}
	c.labels(o, "spec.template.metadata.labels", tmpl.Labels)
	spec := &tmpl.Spec
	if len(spec.Containers) == 0 {
		c.errorf(o, "no containers")
	}
	if sa := spec.ServiceAccountName; sa != "" {
		if _, ok := c.find("ServiceAccount", sa); !ok {
			c.errorf(o, "serviceAccountName %q is not defined", sa)
		}
	}
	volumes := map[string]*corev1.Volume{}
	for i := range spec.Volumes {
		v := &spec.Volumes[i]
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
	claimNames := map[string]bool{}
	for _, pvc := range claims {
		claimNames[pvc.Name] = true
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
	names := map[string]bool{}
	all := append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...)
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
		c.container(o, ctr, volumes, claimNames)
	}
	for _, ctr := range spec.InitContainers {
		if isRelay(&ctr) && (ctr.RestartPolicy == nil || *ctr.RestartPolicy != corev1.ContainerRestartPolicyAlways) {
			c.errorf(o, "relay init container %q must be a native sidecar (restartPolicy: Always)", ctr.Name)
		}
	}
	for i := range all {
		if isRelay(&all[i]) {
			c.relay(o, &all[i], spec, tmpl, volumes, claimNames)
		}
	}
}

func (c *checker) container(o Object, ctr *corev1.Container, volumes map[string]*corev1.Volume, claims map[string]bool) {
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
	mounts := map[string]bool{}
	for _, m := range ctr.VolumeMounts {
		if volumes[m.Name] == nil && !claims[m.Name] {
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
	if ctr.Resources.Requests.Memory().IsZero() || ctr.Resources.Limits.Memory().IsZero() {
		c.errorf(o, "container %q needs a memory request and limit", ctr.Name)
	}
	if ctr.Resources.Requests.Cpu().IsZero() {
		c.errorf(o, "container %q needs a CPU request", ctr.Name)
	}
}

func isRelay(ctr *corev1.Container) bool {
	return strings.HasSuffix(imageName(ctr.Image), "/o365relay") || imageName(ctr.Image) == "o365relay"
}

// knownEnv is the relay's configuration contract; a name with one of its
// prefixes that is not here is a typo the relay would ignore or reject.
func knownEnv(name string) bool {
	switch name {
	case "O365RELAY_LISTEN",
		"O365RELAY_ALLOWED_NETWORKS",
		"O365RELAY_UPSTREAM",
		"O365RELAY_MAILBOX",
		"O365RELAY_SPOOL_DIR",
		"O365RELAY_ADMIN_LISTEN",
		"O365RELAY_LOG_LEVEL",
		"O365RELAY_LOG_FORMAT",
		"O365RELAY_ACK",
		"O365RELAY_SHUTDOWN_TIMEOUT",
		"O365RELAY_HOSTNAME",
		"O365RELAY_MAX_MESSAGE_BYTES",
		"O365RELAY_MAX_RECIPIENTS",
		"O365RELAY_MAX_CONNECTIONS",
		"O365RELAY_MAX_CONNECTIONS_PER_CLIENT",
		"O365RELAY_LINE_ENDINGS",
		"O365RELAY_LISTEN_TLS_CERT",
		"O365RELAY_LISTEN_TLS_KEY",
		"O365RELAY_LISTEN_TLS",
		"O365RELAY_MAILBOX_CONNECTIONS",
		"O365RELAY_MAILBOX_RATE",
		"O365RELAY_MAILBOX_DAILY_RECIPIENTS",
		"O365RELAY_SPOOL_MAX_MESSAGES",
		"O365RELAY_SPOOL_MAX_BYTES",
		"O365RELAY_QUEUE_LIFETIME",
		"O365RELAY_RETRY_MIN",
		"O365RELAY_RETRY_MAX",
		"O365RELAY_SCOPE",
		"O365RELAY_ASSERTION_ALGORITHM",
		"O365RELAY_CREDENTIAL",
		"O365RELAY_MANAGED_IDENTITY_RESOURCE_ID",
		"AZURE_TENANT_ID",
		"AZURE_CLIENT_ID",
		"AZURE_CLIENT_CERTIFICATE_PATH",
		"AZURE_CLIENT_CERTIFICATE_PASSWORD",
		"AZURE_AUTHORITY_HOST",
		"AZURE_CLIENT_SECRET",
		"AZURE_FEDERATED_TOKEN_FILE":
		return true
	}
	return false
}

func checkEnvName(name string) error {
	if (strings.HasPrefix(name, "O365RELAY_") || strings.HasPrefix(name, "AZURE_")) && !knownEnv(name) {
		return fmt.Errorf("%s is not a setting of the relay", name)
	}
	return nil
}

func (c *checker) configMap(o Object, cm *corev1.ConfigMap) {
	for k := range cm.Data {
		if err := checkEnvName(k); err != nil {
			c.errorf(o, "%v", err)
		}
		if strings.HasPrefix(k, "AZURE_CLIENT_SECRET") || strings.HasPrefix(k, "AZURE_CLIENT_CERTIFICATE_PASSWORD") {
			c.errorf(o, "%s is a secret and does not belong in a ConfigMap", k)
		}
	}
}

// relayEnv resolves the relay container's environment: envFrom ConfigMaps
// first, then env (which wins, as in Kubernetes).
func (c *checker) relayEnv(o Object, ctr *corev1.Container) map[string]string {
	env := map[string]string{}
	for _, ef := range ctr.EnvFrom {
		if ef.ConfigMapRef == nil {
			continue
		}
		if cmo, ok := c.find("ConfigMap", ef.ConfigMapRef.Name); ok {
			for k, v := range cmo.Obj.(*corev1.ConfigMap).Data {
				env[ef.Prefix+k] = v
			}
		}
	}
	for _, e := range ctr.Env {
		if err := checkEnvName(e.Name); err != nil {
			c.errorf(o, "container %q: %v", ctr.Name, err)
		}
		if e.ValueFrom != nil {
			env[e.Name] = "<from " + e.Name + ">"
			continue
		}
		env[e.Name] = e.Value
	}
	return env
}

// Binary defaults (the relay's contract), used when a setting is absent.
const (
	defaultListen          = "127.0.0.1:2525"
	defaultAdminListen     = "127.0.0.1:9025"
	defaultShutdownTimeout = 30 * time.Second
)

func isLoopbackAddr(hostport string) (bool, error) {
	host, _, err := splitHostPort(hostport)
	if err != nil {
		return false, err
	}
	if host == "localhost" {
		return true, nil
	}
	if host == "" {
		return false, nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return false, fmt.Errorf("host %q is not an IP address", host)
	}
	return ip.IsLoopback(), nil
}

func splitHostPort(hostport string) (host, port string, err error) {
	i := strings.LastIndex(hostport, ":")
	if i < 0 {
		return "", "", fmt.Errorf("%q has no port", hostport)
	}
	host, port = hostport[:i], hostport[i+1:]
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if port == "" {
		return "", "", fmt.Errorf("%q has no port", hostport)
	}
	return host, port, nil
}

func (c *checker) relay(o Object, ctr *corev1.Container, spec *corev1.PodSpec, tmpl *corev1.PodTemplateSpec, volumes map[string]*corev1.Volume, claims map[string]bool) {
	env := c.relayEnv(o, ctr)
	get := func(k, def string) string {
		if v, ok := env[k]; ok {
			return v
		}
		return def
	}

	// The relay does no SMTP authentication: a non-loopback listener is an
	// open relay unless the allowed networks are explicit (the relay refuses
	// to start otherwise; catch it before a rollout does).
	listen := get("O365RELAY_LISTEN", defaultListen)
	if lo, err := isLoopbackAddr(listen); err != nil {
		c.errorf(o, "O365RELAY_LISTEN: %v", err)
	} else if !lo {
		nets := strings.TrimSpace(env["O365RELAY_ALLOWED_NETWORKS"])
		if nets == "" {
			c.errorf(o, "O365RELAY_LISTEN=%s is not loopback but O365RELAY_ALLOWED_NETWORKS is not set", listen)
		}
		for _, n := range strings.Split(nets, ",") {
			n = strings.TrimSpace(n)
			if n == "" {
				continue
			}
			p, err := netip.ParsePrefix(n)
			switch {
			case err != nil:
				c.errorf(o, "O365RELAY_ALLOWED_NETWORKS: %v", err)
			case p != p.Masked():
				c.errorf(o, "O365RELAY_ALLOWED_NETWORKS: %s has host bits set (did you mean %s?)", n, p.Masked())
			case p.Bits() == 0:
				c.errorf(o, "O365RELAY_ALLOWED_NETWORKS: %s allows every address", n)
			}
		}
	}

	// kubelet httpGet probes connect to the pod IP.
	admin := get("O365RELAY_ADMIN_LISTEN", defaultAdminListen)
	usesHTTPProbe := false
	for _, p := range []*corev1.Probe{ctr.StartupProbe, ctr.LivenessProbe, ctr.ReadinessProbe} {
		if p != nil && p.HTTPGet != nil {
			usesHTTPProbe = true
		}
	}
	if usesHTTPProbe {
		if lo, err := isLoopbackAddr(admin); err != nil {
			c.errorf(o, "O365RELAY_ADMIN_LISTEN: %v", err)
		} else if lo {
			c.errorf(o, "httpGet probes reach the pod IP, but O365RELAY_ADMIN_LISTEN=%s is loopback", admin)
		}
	}
	if ctr.LivenessProbe == nil || ctr.ReadinessProbe == nil {
		c.errorf(o, "relay container %q needs liveness and readiness probes", ctr.Name)
	} else {
		if g := ctr.LivenessProbe.HTTPGet; g == nil || g.Path != "/healthz" {
			c.errorf(o, "relay liveness probe must be httpGet /healthz (a missing token must not restart the relay)")
		}
		if g := ctr.ReadinessProbe.HTTPGet; g == nil || g.Path != "/readyz" {
			c.errorf(o, "relay readiness probe must be httpGet /readyz")
		}
	}

	mountOf := func(p string) (corev1.VolumeMount, bool) {
		var best corev1.VolumeMount
		found := false
		for _, m := range ctr.VolumeMounts {
			mp := strings.TrimSuffix(m.MountPath, "/")
			if (p == mp || strings.HasPrefix(p, mp+"/")) && len(mp) >= len(best.MountPath) {
				best, found = m, true
			}
		}
		return best, found
	}

	// The spool must be a writable volume: the root filesystem is read-only
	// and a container layer would not survive a restart anyway.
	spool := get("O365RELAY_SPOOL_DIR", "/var/spool/o365relay")
	if m, ok := mountOf(spool); !ok || m.ReadOnly {
		c.errorf(o, "O365RELAY_SPOOL_DIR=%s is not on a writable volume mount", spool)
	} else if v := volumes[m.Name]; v != nil && v.EmptyDir == nil && v.PersistentVolumeClaim == nil {
		c.errorf(o, "spool volume %q is neither an emptyDir nor a PersistentVolumeClaim", m.Name)
	} else if v == nil && !claims[m.Name] {
		c.errorf(o, "spool volume %q is not defined", m.Name)
	}

	// Credential: a certificate file from a Secret volume, or workload identity.
	if certPath, ok := env["AZURE_CLIENT_CERTIFICATE_PATH"]; ok {
		m, found := mountOf(certPath)
		switch {
		case !found:
			c.errorf(o, "AZURE_CLIENT_CERTIFICATE_PATH=%s is not inside any volume mount", certPath)
		case m.SubPath != "" || m.SubPathExpr != "":
			c.errorf(o, "the certificate is mounted with subPath: Secret updates never reach it, so rotation breaks")
		case !m.ReadOnly:
			c.errorf(o, "the certificate volume %q should be mounted readOnly", m.Name)
		default:
			v := volumes[m.Name]
			if v == nil || v.Secret == nil {
				c.errorf(o, "AZURE_CLIENT_CERTIFICATE_PATH is on volume %q, which is not a Secret", m.Name)
				break
			}
			key := strings.TrimPrefix(strings.TrimPrefix(certPath, strings.TrimSuffix(m.MountPath, "/")), "/")
			if so, ok := c.find("Secret", v.Secret.SecretName); ok {
				s := so.Obj.(*corev1.Secret)
				_, inData := s.Data[key]
				_, inString := s.StringData[key]
				if !inData && !inString {
					c.errorf(o, "Secret %q has no key %q (AZURE_CLIENT_CERTIFICATE_PATH=%s)", v.Secret.SecretName, key, certPath)
				}
			}
			if v.Secret.DefaultMode == nil || *v.Secret.DefaultMode&0o077&^0o040 != 0 {
				c.errorf(o, "certificate Secret volume must set a defaultMode readable by owner (and fsGroup) only, e.g. 0400")
			}
			if spec.SecurityContext == nil || spec.SecurityContext.FSGroup == nil {
				c.errorf(o, "certificate Secret volume is root-owned: set pod securityContext.fsGroup so the non-root relay can read it")
			}
		}
	} else if tmpl.Labels["azure.workload.identity/use"] == "true" {
		sa := spec.ServiceAccountName
		if sa == "" || sa == "default" {
			c.errorf(o, "workload identity needs a dedicated serviceAccountName")
		} else if so, ok := c.find("ServiceAccount", sa); ok {
			ann := so.Obj.(*corev1.ServiceAccount).Annotations
			if ann["azure.workload.identity/client-id"] == "" {
				c.errorf(o, "ServiceAccount %q lacks the azure.workload.identity/client-id annotation", sa)
			}
		}
		for _, k := range []string{"AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST"} {
			if _, set := env[k]; set {
				c.errorf(o, "%s is injected by the workload identity webhook; do not set it", k)
			}
		}
	} else if _, ok := env["AZURE_FEDERATED_TOKEN_FILE"]; !ok {
		c.errorf(o, "relay has no credential: neither AZURE_CLIENT_CERTIFICATE_PATH nor workload identity")
	}
	for _, k := range []string{"AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PASSWORD"} {
		for _, e := range ctr.Env {
			if e.Name == k && e.ValueFrom == nil {
				c.errorf(o, "%s given as a literal value; use valueFrom.secretKeyRef", k)
			}
		}
	}

	// Service links would inject O365RELAY_* variables for a Service named
	// o365relay.
	if spec.EnableServiceLinks == nil || *spec.EnableServiceLinks {
		c.errorf(o, "set enableServiceLinks: false (a Service named o365relay injects O365RELAY_PORT and friends)")
	}

	// SIGTERM drains for O365RELAY_SHUTDOWN_TIMEOUT; the grace period must
	// also cover the preStop sleep, or the kubelet SIGKILLs a drain.
	shutdown := defaultShutdownTimeout
	if s, ok := env["O365RELAY_SHUTDOWN_TIMEOUT"]; ok {
		d, err := time.ParseDuration(s)
		if err != nil {
			c.errorf(o, "O365RELAY_SHUTDOWN_TIMEOUT=%q: %v", s, err)
		}
		shutdown = d
	}
	need := shutdown
	if ctr.Lifecycle != nil && ctr.Lifecycle.PreStop != nil {
		if s := ctr.Lifecycle.PreStop.Sleep; s != nil {
			need += time.Duration(s.Seconds) * time.Second
		}
		if ctr.Lifecycle.PreStop.Exec != nil {
			c.errorf(o, "preStop exec cannot work: the relay image has no shell or tools")
		}
	}
	grace := 30 * time.Second
	if spec.TerminationGracePeriodSeconds != nil {
		grace = time.Duration(*spec.TerminationGracePeriodSeconds) * time.Second
	}
	if grace <= need {
		c.errorf(o, "terminationGracePeriodSeconds (%v) must exceed preStop + O365RELAY_SHUTDOWN_TIMEOUT (%v)", grace, need)
	}

	// Hardening.
	psc := spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	sc := ctr.SecurityContext
	if sc == nil {
		sc = &corev1.SecurityContext{}
	}
	nonRoot := (sc.RunAsNonRoot != nil && *sc.RunAsNonRoot) || (sc.RunAsNonRoot == nil && psc.RunAsNonRoot != nil && *psc.RunAsNonRoot)
	if !nonRoot {
		c.errorf(o, "relay container %q must run with runAsNonRoot", ctr.Name)
	}
	uid := sc.RunAsUser
	if uid == nil {
		uid = psc.RunAsUser
	}
	if uid != nil && *uid == 0 {
		c.errorf(o, "relay container %q runs as uid 0", ctr.Name)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		c.errorf(o, "relay container %q needs readOnlyRootFilesystem: true", ctr.Name)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		c.errorf(o, "relay container %q needs allowPrivilegeEscalation: false", ctr.Name)
	}
	if sc.Privileged != nil && *sc.Privileged {
		c.errorf(o, "relay container %q is privileged", ctr.Name)
	}
	dropAll := false
	if sc.Capabilities != nil {
		for _, d := range sc.Capabilities.Drop {
			if d == "ALL" {
				dropAll = true
			}
		}
		if len(sc.Capabilities.Add) > 0 {
			c.errorf(o, "relay container %q adds capabilities %v", ctr.Name, sc.Capabilities.Add)
		}
	}
	if !dropAll {
		c.errorf(o, "relay container %q must drop ALL capabilities", ctr.Name)
	}
	seccomp := sc.SeccompProfile
	if seccomp == nil {
		seccomp = psc.SeccompProfile
	}
	if seccomp == nil || (seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault && seccomp.Type != corev1.SeccompProfileTypeLocalhost) {
		c.errorf(o, "relay container %q needs seccompProfile RuntimeDefault", ctr.Name)
	}
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
	check := func(dir string, ports []networkingv1.NetworkPolicyPort, onPod bool) {
		for _, p := range ports {
			if p.Port == nil {
				continue
			}
			if onPod {
				for _, w := range ws {
					if !containerPort(w, *p.Port) {
						c.errorf(o, "%s port %s is not a container port of %s", dir, p.Port.String(), w)
					}
				}
			}
		}
	}
	for _, r := range np.Spec.Ingress {
		check("ingress", r.Ports, true)
		for _, peer := range r.From {
			c.peer(o, peer)
		}
	}
	for _, r := range np.Spec.Egress {
		check("egress", r.Ports, false)
		for _, peer := range r.To {
			c.peer(o, peer)
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

// monitor checks that a ServiceMonitor selects a Service with the port, or
// a PodMonitor pods whose containers name it.
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
		found := false
		if o.Kind == "ServiceMonitor" {
			for _, so := range c.objs {
				if s, ok := so.Obj.(*corev1.Service); ok && sel.Matches(labels.Set(s.Labels)) {
					for _, p := range s.Spec.Ports {
						found = found || p.Name == ep.Port
					}
				}
			}
		} else {
			for _, w := range c.selected(sel) {
				found = found || containerPort(w, intstr.FromString(ep.Port))
			}
		}
		if !found {
			c.errorf(o, "endpoint port %q is not a port of what it selects", ep.Port)
		}
		if ep.Path != "/metrics" {
			c.errorf(o, "endpoint path %q: the relay serves /metrics", ep.Path)
		}
		job := false
		for _, r := range ep.Relabelings {
			job = job || (r.TargetLabel == "job" && r.Replacement == "o365relay")
		}
		if !job {
			c.errorf(o, `endpoint does not set job="o365relay", which the alert rules expect`)
		}
	}
}
