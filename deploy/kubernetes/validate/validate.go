// Package validate checks the Kubernetes manifests under deploy/kubernetes
// offline, without a cluster and without downloading JSON schemas.
//
// It owns two layers of checking:
//
//  1. Schema (decode.go): every YAML document is decoded strictly into the
//     typed k8s.io/api object for its apiVersion/kind (unknown fields,
//     duplicate keys and wrong types are errors) - the same structs the API
//     server decodes into, so a misspelt field that kubectl would only warn
//     about, or that a server would silently drop, fails here.
//  2. Consistency: the cross-object facts the API server does not check but
//     a working deployment needs (objects.go, pod.go) - selectors that
//     select, named ports and volumes that exist, ConfigMaps, Secrets and
//     ServiceAccounts that are defined - plus o365relay's own rules
//     (relay.go, credential.go, hardening.go): a non-loopback SMTP listener
//     needs an explicit O365RELAY_ALLOWED_NETWORKS of valid CIDRs, httpGet
//     probes need an admin listener on the pod address, the certificate
//     path lies inside a Secret volume (not a subPath: those never see
//     updates), the spool is a writable volume, and the relay container runs
//     hardened. The monitoring objects (monitoring.go) scrape what the relay
//     serves.
//
// The relay's settings - their environment names, defaults, which are
// secrets, and how a value is parsed - come from the relay's own config
// package (settings.go), so a setting added or renamed there is known here
// without a second list.
//
// It lives in its own Go module so the relay's module never takes the
// k8s.io dependencies.
package validate

import (
	"fmt"
	"sort"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

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

// checker collects the consistency errors of one directory.
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
		c.object(o)
	}
}

// object runs the checks of o's kind.
func (c *checker) object(o Object) {
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

// find looks an object up by kind and name, here or in the extra objects.
func (c *checker) find(kind, name string) (Object, bool) {
	for _, o := range c.all {
		if o.Kind == kind && o.Name == name {
			return o, true
		}
	}
	return Object{}, false
}
