package validate

import (
	"fmt"
	"strings"

	"github.com/o365relay/o365relay/config"
	corev1 "k8s.io/api/core/v1"
)

// The relay's settings come from its own config package (config.Settings):
// which environment names exist, their defaults, which are secrets, and
// how a value is parsed. Nothing here repeats them.

// The settings the relay rules read, by file key (config.Setting.Key). A
// key config no longer has panics in setting; TestRuleSettingsExist names
// it first.
const (
	keyListen             = "listen"
	keyAllowedNetworks    = "allowed_networks"
	keyAdminListen        = "admin_listen"
	keySpoolDir           = "spool_dir"
	keyShutdownTimeout    = "shutdown_timeout"
	keyCertificatePath    = "client_certificate_path"
	keyFederatedTokenFile = "federated_token_file"
	keyClientSecret       = "client_secret"
	keyCredential         = "credential"
)

// azurePrefix starts the Azure SDKs' environment names, which the relay
// uses for its identity settings; an AZURE_* name that is not a setting
// is a typo the relay would silently ignore.
const azurePrefix = "AZURE_"

// relaySettings returns the relay's settings by environment name (a fresh
// map: config.Settings() builds its table on each call, and so does this).
func relaySettings() map[string]config.Setting {
	m := map[string]config.Setting{}
	for _, s := range config.Settings() {
		m[s.Env] = s
	}
	return m
}

// setting returns the relay's setting with the file key key.
func setting(key string) config.Setting {
	for _, s := range relaySettings() {
		if s.Key == key {
			return s
		}
	}
	panic(fmt.Sprintf("validate: the relay has no setting %q (config.Settings); update the rule that reads it", key))
}

// secretEnvs are the environment names of the settings that are secrets.
func secretEnvs() []string {
	var out []string
	for _, s := range config.Settings() {
		if s.Secret {
			out = append(out, s.Env)
		}
	}
	return out
}

// checkEnvName refuses a name with the relay's or Azure's prefix that is
// not one of the relay's settings.
func checkEnvName(name string) error {
	if !strings.HasPrefix(name, config.EnvPrefix) && !strings.HasPrefix(name, azurePrefix) {
		return nil
	}
	if _, ok := relaySettings()[name]; !ok {
		return fmt.Errorf("%s is not a setting of the relay", name)
	}
	return nil
}

// configMap checks every key of a ConfigMap as a setting name: the
// manifests use ConfigMaps only as the relay's envFrom.
func (c *checker) configMap(o Object, cm *corev1.ConfigMap) {
	for k := range cm.Data {
		if err := checkEnvName(k); err != nil {
			c.errorf(o, "%v", err)
		}
		for _, s := range secretEnvs() {
			if strings.HasPrefix(k, s) {
				c.errorf(o, "%s is a secret and does not belong in a ConfigMap", k)
			}
		}
	}
}

// relayEnv is the relay container's environment as Kubernetes assembles
// it: envFrom ConfigMaps first, then env, which wins. A value taken with
// valueFrom is not known here: it reads "<from NAME>" and ref says so.
type relayEnv struct {
	vals map[string]string
	ref  map[string]bool
}

// has reports whether the environment sets name.
func (e relayEnv) has(name string) bool {
	_, ok := e.vals[name]
	return ok
}

func (c *checker) relayEnv(o Object, ctr *corev1.Container) relayEnv {
	env := relayEnv{vals: map[string]string{}, ref: map[string]bool{}}
	for _, ef := range ctr.EnvFrom {
		if ef.ConfigMapRef == nil {
			continue
		}
		if cmo, ok := c.find("ConfigMap", ef.ConfigMapRef.Name); ok {
			for k, v := range cmo.Obj.(*corev1.ConfigMap).Data {
				env.vals[ef.Prefix+k] = v
			}
		}
	}
	for _, e := range ctr.Env {
		if err := checkEnvName(e.Name); err != nil {
			c.errorf(o, "container %q: %v", ctr.Name, err)
		}
		if e.ValueFrom != nil {
			env.vals[e.Name] = "<from " + e.Name + ">"
			env.ref[e.Name] = true
			continue
		}
		env.vals[e.Name] = e.Value
		delete(env.ref, e.Name)
	}
	return env
}

// value returns the setting's value as the relay will see it: the one
// set, else the relay's default. A value set here is first parsed by the
// relay's own parser (config.Setting.Check); if the relay would refuse it,
// that is reported naming the variable and ok is false, so a rule does not
// reason about a value the relay never runs with. A value from valueFrom
// is not parsed.
func (c *checker) value(o Object, env relayEnv, key string) (v string, ok bool) {
	s := setting(key)
	v, set := env.vals[s.Env]
	if !set {
		return s.Default, true
	}
	if env.ref[s.Env] {
		return v, true
	}
	if err := s.Check(v); err != nil {
		c.errorf(o, "%s: %v", s.Env, err)
		return v, false
	}
	return v, true
}
