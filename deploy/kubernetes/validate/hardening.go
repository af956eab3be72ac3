package validate

import (
	corev1 "k8s.io/api/core/v1"
)

// relayHardening: the relay container runs as a non-root user with a
// read-only root filesystem, no privilege escalation, no capabilities and
// the runtime's seccomp profile. The container's securityContext wins
// over the pod's where both can say it.
func (c *checker) relayHardening(o Object, ctr *corev1.Container, spec *corev1.PodSpec) {
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
	c.capabilities(o, ctr.Name, sc.Capabilities)
	seccomp := sc.SeccompProfile
	if seccomp == nil {
		seccomp = psc.SeccompProfile
	}
	if seccomp == nil || (seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault && seccomp.Type != corev1.SeccompProfileTypeLocalhost) {
		c.errorf(o, "relay container %q needs seccompProfile RuntimeDefault", ctr.Name)
	}
}

// capabilities: drop ALL, add none.
func (c *checker) capabilities(o Object, name string, caps *corev1.Capabilities) {
	dropAll := false
	if caps != nil {
		for _, d := range caps.Drop {
			if d == "ALL" {
				dropAll = true
			}
		}
		if len(caps.Add) > 0 {
			c.errorf(o, "relay container %q adds capabilities %v", name, caps.Add)
		}
	}
	if !dropAll {
		c.errorf(o, "relay container %q must drop ALL capabilities", name)
	}
}
