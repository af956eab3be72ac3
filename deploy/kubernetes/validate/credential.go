package validate

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// The relay's credential in a pod: a certificate file from a Secret
// volume, Azure workload identity, a client secret or a managed identity
// (the kinds config accepts). Secrets are never literal values.

// workloadIdentityLabel opts a pod into the Azure workload identity
// webhook, which then injects webhookEnv and the projected token file.
const workloadIdentityLabel = "azure.workload.identity/use"

// webhookEnv are the variables the workload identity webhook injects: the
// webhook's names, which the relay reads as its identity settings
// (TestWebhookEnvAreSettings).
var webhookEnv = []string{"AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST"}

func (c *checker) relayCredential(o Object, ctr *corev1.Container, env relayEnv, p *pod) {
	switch {
	case env.has(setting(keyCertificatePath).Env):
		c.certificate(o, ctr, env, p)
	case p.tmpl.Labels[workloadIdentityLabel] == "true":
		c.workloadIdentity(o, env, p)
	case env.has(setting(keyFederatedTokenFile).Env), env.has(setting(keyClientSecret).Env),
		env.vals[setting(keyCredential).Env] == "managed_identity":
		// Nothing in the pod to check beyond the secret's valueFrom below.
	default:
		c.errorf(o, "relay has no credential: none of %s, workload identity, %s or %s=managed_identity",
			setting(keyCertificatePath).Env, setting(keyClientSecret).Env, setting(keyCredential).Env)
	}
	for _, k := range secretEnvs() {
		for _, e := range ctr.Env {
			if e.Name == k && e.ValueFrom == nil {
				c.errorf(o, "%s given as a literal value; use valueFrom.secretKeyRef", k)
			}
		}
	}
}

// certificate: the certificate path lies in a read-only Secret volume
// (not a subPath: those never see the Secret's updates, so rotation would
// break), the Secret has the key, and only the owner (and fsGroup) can
// read it.
func (c *checker) certificate(o Object, ctr *corev1.Container, env relayEnv, p *pod) {
	certEnv := setting(keyCertificatePath).Env
	certPath := env.vals[certEnv]
	m, found := mountOf(ctr, certPath)
	switch {
	case !found:
		c.errorf(o, "%s=%s is not inside any volume mount", certEnv, certPath)
		return
	case m.SubPath != "" || m.SubPathExpr != "":
		c.errorf(o, "the certificate is mounted with subPath: Secret updates never reach it, so rotation breaks")
		return
	case !m.ReadOnly:
		c.errorf(o, "the certificate volume %q should be mounted readOnly", m.Name)
		return
	}
	v := p.volumes[m.Name]
	if v == nil || v.Secret == nil {
		c.errorf(o, "%s is on volume %q, which is not a Secret", certEnv, m.Name)
		return
	}
	key := strings.TrimPrefix(strings.TrimPrefix(certPath, strings.TrimSuffix(m.MountPath, "/")), "/")
	if so, ok := c.find("Secret", v.Secret.SecretName); ok {
		s := so.Obj.(*corev1.Secret)
		_, inData := s.Data[key]
		_, inString := s.StringData[key]
		if !inData && !inString {
			c.errorf(o, "Secret %q has no key %q (%s=%s)", v.Secret.SecretName, key, certEnv, certPath)
		}
	}
	if v.Secret.DefaultMode == nil || *v.Secret.DefaultMode&0o077&^0o040 != 0 {
		c.errorf(o, "certificate Secret volume must set a defaultMode readable by owner (and fsGroup) only, e.g. 0400")
	}
	if p.spec.SecurityContext == nil || p.spec.SecurityContext.FSGroup == nil {
		c.errorf(o, "certificate Secret volume is root-owned: set pod securityContext.fsGroup so the non-root relay can read it")
	}
}

// workloadIdentity: a dedicated ServiceAccount annotated with the client
// ID, and none of the variables the webhook injects set by hand.
func (c *checker) workloadIdentity(o Object, env relayEnv, p *pod) {
	sa := p.spec.ServiceAccountName
	if sa == "" || sa == "default" {
		c.errorf(o, "workload identity needs a dedicated serviceAccountName")
	} else if so, ok := c.find("ServiceAccount", sa); ok {
		ann := so.Obj.(*corev1.ServiceAccount).Annotations
		if ann["azure.workload.identity/client-id"] == "" {
			c.errorf(o, "ServiceAccount %q lacks the azure.workload.identity/client-id annotation", sa)
		}
	}
	for _, k := range webhookEnv {
		if env.has(k) {
			c.errorf(o, "%s is injected by the workload identity webhook; do not set it", k)
		}
	}
}
