package validate

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// The relay container's own rules: what its settings mean for the pod it
// runs in. The credential's rules are in credential.go, the hardening in
// hardening.go; the settings themselves come from settings.go.

// The admin endpoint's paths (relay/admin): liveness, readiness, metrics.
const (
	pathHealthz = "/healthz"
	pathReadyz  = "/readyz"
	pathMetrics = "/metrics"
)

// kubeletGrace is Kubernetes' default terminationGracePeriodSeconds.
const kubeletGrace = 30 * time.Second

func isRelay(ctr *corev1.Container) bool {
	return strings.HasSuffix(imageName(ctr.Image), "/o365relay") || imageName(ctr.Image) == "o365relay"
}

// relay checks the relay container ctr of pod p.
func (c *checker) relay(o Object, ctr *corev1.Container, p *pod) {
	env := c.relayEnv(o, ctr)
	c.relayListener(o, env)
	c.relayProbes(o, ctr, env)
	c.relaySpool(o, ctr, env, p)
	c.relayCredential(o, ctr, env, p)
	// Service links would inject O365RELAY_* variables for a Service named
	// o365relay.
	if p.spec.EnableServiceLinks == nil || *p.spec.EnableServiceLinks {
		c.errorf(o, "set enableServiceLinks: false (a Service named o365relay injects O365RELAY_PORT and friends)")
	}
	c.relayShutdown(o, ctr, env, p.spec)
	c.relayHardening(o, ctr, p.spec)
}

// relayListener: the relay does no SMTP authentication, so a non-loopback
// listener is an open relay unless the allowed networks are explicit (the
// relay refuses to start otherwise; catch it before a rollout does).
func (c *checker) relayListener(o Object, env relayEnv) {
	listen, ok := c.value(o, env, keyListen)
	if !ok {
		return
	}
	listenEnv := setting(keyListen).Env
	if lo, err := isLoopbackAddr(listen); err != nil {
		c.errorf(o, "%s: %v", listenEnv, err)
		return
	} else if lo {
		return
	}
	netsEnv := setting(keyAllowedNetworks).Env
	if strings.TrimSpace(env.vals[netsEnv]) == "" {
		c.errorf(o, "%s=%s is not loopback but %s is not set", listenEnv, listen, netsEnv)
		return
	}
	nets, ok := c.value(o, env, keyAllowedNetworks)
	if !ok {
		return
	}
	for _, n := range strings.Split(nets, ",") {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		// The relay's parser accepted the list (a bare address is one
		// host); only a value from valueFrom can fail to parse here.
		p, err := netip.ParsePrefix(n)
		if _, aerr := netip.ParseAddr(n); err != nil && aerr != nil {
			c.errorf(o, "%s: %v", netsEnv, err)
		} else if err == nil && p.Bits() == 0 {
			c.errorf(o, "%s: %s allows every address", netsEnv, n)
		}
	}
}

// relayProbes: the kubelet's httpGet probes connect to the pod IP, so the
// admin listener must not be loopback; liveness is /healthz (a missing
// token must not restart the relay) and readiness /readyz.
func (c *checker) relayProbes(o Object, ctr *corev1.Container, env relayEnv) {
	usesHTTPProbe := false
	for _, p := range []*corev1.Probe{ctr.StartupProbe, ctr.LivenessProbe, ctr.ReadinessProbe} {
		if p != nil && p.HTTPGet != nil {
			usesHTTPProbe = true
		}
	}
	if usesHTTPProbe {
		if admin, ok := c.value(o, env, keyAdminListen); ok {
			adminEnv := setting(keyAdminListen).Env
			if lo, err := isLoopbackAddr(admin); err != nil {
				c.errorf(o, "%s: %v", adminEnv, err)
			} else if lo {
				c.errorf(o, "httpGet probes reach the pod IP, but %s=%s is loopback", adminEnv, admin)
			}
		}
	}
	if ctr.LivenessProbe == nil || ctr.ReadinessProbe == nil {
		c.errorf(o, "relay container %q needs liveness and readiness probes", ctr.Name)
		return
	}
	if g := ctr.LivenessProbe.HTTPGet; g == nil || g.Path != pathHealthz {
		c.errorf(o, "relay liveness probe must be httpGet %s (a missing token must not restart the relay)", pathHealthz)
	}
	if g := ctr.ReadinessProbe.HTTPGet; g == nil || g.Path != pathReadyz {
		c.errorf(o, "relay readiness probe must be httpGet %s", pathReadyz)
	}
}

// relaySpool: the spool must be a writable volume; the root filesystem is
// read-only, and a container layer would not survive a restart anyway.
func (c *checker) relaySpool(o Object, ctr *corev1.Container, env relayEnv, p *pod) {
	spool, ok := c.value(o, env, keySpoolDir)
	if !ok {
		return
	}
	if m, ok := mountOf(ctr, spool); !ok || m.ReadOnly {
		c.errorf(o, "%s=%s is not on a writable volume mount", setting(keySpoolDir).Env, spool)
	} else if v := p.volumes[m.Name]; v != nil && v.EmptyDir == nil && v.PersistentVolumeClaim == nil {
		c.errorf(o, "spool volume %q is neither an emptyDir nor a PersistentVolumeClaim", m.Name)
	} else if v == nil && !p.claims[m.Name] {
		c.errorf(o, "spool volume %q is not defined", m.Name)
	}
}

// mountOf returns the container's volume mount that holds path p: the
// deepest one whose mount path is p or a parent of it.
func mountOf(ctr *corev1.Container, p string) (corev1.VolumeMount, bool) {
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

// relayShutdown: SIGTERM drains for shutdown_timeout; the grace period
// must also cover the preStop sleep, or the kubelet SIGKILLs a drain.
func (c *checker) relayShutdown(o Object, ctr *corev1.Container, env relayEnv, spec *corev1.PodSpec) {
	shutdownEnv := setting(keyShutdownTimeout).Env
	var shutdown time.Duration
	if s, ok := c.value(o, env, keyShutdownTimeout); ok {
		d, err := time.ParseDuration(s)
		if err != nil { // a value from valueFrom
			c.errorf(o, "%s=%q: %v", shutdownEnv, s, err)
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
	grace := kubeletGrace
	if spec.TerminationGracePeriodSeconds != nil {
		grace = time.Duration(*spec.TerminationGracePeriodSeconds) * time.Second
	}
	if grace <= need {
		c.errorf(o, "terminationGracePeriodSeconds (%v) must exceed preStop + %s (%v)", grace, shutdownEnv, need)
	}
}

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
