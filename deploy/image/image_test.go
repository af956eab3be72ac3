package main

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// relayBinary is the static binary: O365RELAY_BINARY (deploy/check.sh
// passes the one it built), else built here once.
var builtBinary string

func relayBinary(t *testing.T) string {
	if b := os.Getenv("O365RELAY_BINARY"); b != "" {
		return b
	}
	if builtBinary != "" {
		return builtBinary
	}
	dir, err := os.MkdirTemp("", "o365relay-image-")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "o365relay")
	builtBinary = out
	cmd := exec.Command("go", "build", "-C", "../..", "-trimpath", "-ldflags=-s -w", "-o", out, "./cmd/o365relay")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	return out
}

// buildLayout writes the image as an OCI layout and reads it back.
func buildLayout(t *testing.T) (v1.Image, string) {
	t.Helper()
	ca := "/etc/ssl/certs/ca-certificates.crt"
	if _, err := os.Stat(ca); err != nil {
		t.Skip("no CA bundle (apt-get install ca-certificates)")
	}
	dir := filepath.Join(t.TempDir(), "oci")
	if err := run(relayBinary(t), dir, "ghcr.io/o365relay/o365relay:test", ca, "amd64", "test", "0123abcd"); err != nil {
		t.Fatal(err)
	}
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].MediaType != types.OCIManifestSchema1 ||
		im.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "ghcr.io/o365relay/o365relay:test" {
		t.Fatalf("index: %+v", im.Manifests)
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	return img, dir
}

// The layout is a valid OCI image: every digest and size verifies, media
// types are OCI's.
func TestLayoutValid(t *testing.T) {
	img, _ := buildLayout(t)
	if err := validate.Image(img); err != nil {
		t.Fatalf("the image does not validate: %v", err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	// Reproducible: the same inputs give the same digest.
	again, _ := buildLayout(t)
	d1, _ := img.Digest()
	d2, _ := again.Digest()
	if d1 != d2 {
		t.Errorf("two builds of the same binary differ: %s, %s", d1, d2)
	}
	if m.Config.MediaType != types.OCIConfigJSON || len(m.Layers) != 1 || m.Layers[0].MediaType != types.OCILayer {
		t.Errorf("manifest media types: config %s, layers %+v", m.Config.MediaType, m.Layers)
	}
}

// dockerfileRuntime reads the runtime stage's instructions of the root
// Dockerfile, continuation lines joined.
func dockerfileRuntime(t *testing.T) map[string][]string {
	b, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	text := regexp.MustCompile(`\\\n\s*`).ReplaceAllString(string(b), " ")
	out := map[string][]string{}
	stage := 0
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		op, arg, _ := strings.Cut(line, " ")
		op = strings.ToUpper(op)
		if op == "FROM" {
			stage++
			continue
		}
		if stage == 2 {
			out[op] = append(out[op], strings.TrimSpace(arg))
		}
	}
	return out
}

// The image's configuration is the Dockerfile's runtime stage: the two
// ways to build the image cannot drift.
func TestConfigMatchesDockerfile(t *testing.T) {
	img, _ := buildLayout(t)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	df := dockerfileRuntime(t)
	join := func(ss []string) string { return strings.Join(ss, ", ") }
	check := func(what, got, want string) {
		if got != want {
			t.Errorf("%s: image %q, Dockerfile %q", what, got, want)
		}
	}
	check("USER", c.User, join(df["USER"]))
	check("ENTRYPOINT", `["`+join(c.Entrypoint)+`"]`, join(df["ENTRYPOINT"]))
	check("CMD", `["`+join(c.Cmd)+`"]`, join(df["CMD"]))
	check("STOPSIGNAL", c.StopSignal, join(df["STOPSIGNAL"]))
	check("VOLUME", strings.Join(slices.Sorted(mapKeys(c.Volumes)), " "), join(df["VOLUME"]))
	var ports []string
	for _, p := range strings.Fields(join(df["EXPOSE"])) {
		ports = append(ports, p+"/tcp")
	}
	check("EXPOSE", strings.Join(slices.Sorted(mapKeys(c.ExposedPorts)), " "), strings.Join(slices.Sorted(slices.Values(ports)), " "))
	for _, kv := range strings.Fields(join(df["ENV"])) {
		if !slices.Contains(c.Env, kv) {
			t.Errorf("ENV %s is not in the image's %v", kv, c.Env)
		}
	}
	hc := join(df["HEALTHCHECK"])
	if c.Healthcheck == nil || !strings.Contains(hc, `CMD ["`+strings.Join(c.Healthcheck.Test[1:], `", "`)+`"]`) ||
		!strings.Contains(hc, "--interval="+durationText(c.Healthcheck.Interval)) || !strings.Contains(hc, "--timeout="+durationText(c.Healthcheck.Timeout)) ||
		!strings.Contains(hc, "--start-period="+durationText(c.Healthcheck.StartPeriod)) || !strings.Contains(hc, "--retries=3") {
		t.Errorf("HEALTHCHECK: image %+v, Dockerfile %q", c.Healthcheck, hc)
	}
	for _, label := range regexp.MustCompile(`(org\.opencontainers\.image\.[a-z.]+)=`).FindAllStringSubmatch(join(df["LABEL"]), -1) {
		if label[1] == "org.opencontainers.image.base.name" {
			continue // the Dockerfile's base is distroless; this one is empty
		}
		if _, ok := c.Labels[label[1]]; !ok {
			t.Errorf("label %s missing", label[1])
		}
	}
	if c.Labels["org.opencontainers.image.revision"] != "0123abcd" || cf.OS != "linux" || cf.Architecture != "amd64" {
		t.Errorf("labels %v, platform %s/%s", c.Labels, cf.OS, cf.Architecture)
	}
}

// The image's settings are the relay's, asked of the relay itself (`config
// show` on the binary, with the image's environment) rather than copied:
// every O365RELAY_/AZURE_ variable the image sets is a setting the relay
// takes from the environment with a value it accepts, the exposed ports are
// those of its listen and admin_listen, and the volume is its spool_dir.
func TestConfigMatchesRelaySettings(t *testing.T) {
	img, _ := buildLayout(t)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	cmd := exec.Command(relayBinary(t), "config", "show", "--json")
	cmd.Env = c.Env
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("the relay refuses the image's environment %v: %v\n%s", c.Env, err, exitStderr(err))
	}
	var rows []struct{ Key, Value, Source, Where string }
	if err := json.Unmarshal(out, &rows); err != nil {
		t.Fatal(err)
	}
	fromEnv, value := map[string]bool{}, map[string]string{}
	for _, r := range rows {
		value[r.Key] = r.Value
		if r.Source == "environment" {
			fromEnv[r.Where] = true
		}
	}
	for _, kv := range c.Env {
		name, _, _ := strings.Cut(kv, "=")
		if (strings.HasPrefix(name, "O365RELAY_") || strings.HasPrefix(name, "AZURE_")) && !fromEnv[name] {
			t.Errorf("the image sets %s, which the relay does not read as a setting", name)
		}
	}
	var ports []string
	for _, key := range []string{"listen", "admin_listen"} {
		_, port, err := net.SplitHostPort(value[key])
		if err != nil {
			t.Fatalf("%s = %q: %v", key, value[key], err)
		}
		ports = append(ports, port+"/tcp")
	}
	if got, want := strings.Join(slices.Sorted(mapKeys(c.ExposedPorts)), " "), strings.Join(slices.Sorted(slices.Values(ports)), " "); got != want {
		t.Errorf("the image exposes %s; the relay listens on %s", got, want)
	}
	if got := strings.Join(slices.Sorted(mapKeys(c.Volumes)), " "); got != value["spool_dir"] {
		t.Errorf("the image's volume is %s; the relay's spool_dir is %s", got, value["spool_dir"])
	}
}

// exitStderr is what a failed command wrote to stderr, if it said.
func exitStderr(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(ee.Stderr)
	}
	return ""
}

// durationText writes d as the Dockerfile does: whole seconds.
func durationText(d time.Duration) string { return strconv.Itoa(int(d.Seconds())) + "s" }

func mapKeys(m map[string]struct{}) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// extract unpacks the image's filesystem into dir, keeping modes (and, as
// root, owners).
func extract(t *testing.T, img v1.Image, dir string) map[string]*tar.Header {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	hs := map[string]*tar.Header{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		hs[h.Name] = h
		p := filepath.Join(dir, h.Name)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(f, tr); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Chmod(p, os.FileMode(h.Mode&0o777)|map[bool]os.FileMode{true: os.ModeSticky}[h.Mode&0o1000 != 0]); err != nil {
			t.Fatal(err)
		}
		if os.Geteuid() == 0 {
			if err := os.Lchown(p, h.Uid, h.Gid); err != nil {
				t.Fatal(err)
			}
		}
	}
	return hs
}

// The filesystem holds what the relay needs, owned as the Dockerfile's
// COPY --chown does it, and the binary in it runs. As root, the image's
// filesystem becomes a chroot and the relay's demo runs in it as uid
// 65532 with the image's environment: the static binary needs nothing the
// image lacks (no libc, no shell), /tmp is writable, and the non-root user
// works.
func TestFilesystemRuns(t *testing.T) {
	img, _ := buildLayout(t)
	root := t.TempDir()
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	hs := extract(t, img, root)
	for name, want := range map[string][3]int64{
		"o365relay": {0o755, 0, 0}, "var/spool/o365relay/": {0o700, 65532, 65532}, "tmp/": {0o1777, 0, 0},
		"etc/ssl/certs/ca-certificates.crt": {0o644, 0, 0}, "etc/passwd": {0o644, 0, 0},
	} {
		h := hs[name]
		if h == nil || h.Mode != want[0] || int64(h.Uid) != want[1] || int64(h.Gid) != want[2] {
			t.Errorf("%s: %+v, want mode %o uid %d gid %d", name, h, want[0], want[1], want[2])
		}
	}
	out, err := exec.Command(filepath.Join(root, "o365relay"), "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "o365relay ") {
		t.Fatalf("the image's binary: %v\n%s", err, out)
	}
	chroot, err := exec.LookPath("chroot")
	if os.Geteuid() != 0 || err != nil {
		t.Skip("not root (or no chroot): the demo was not run inside the image's filesystem")
	}
	cf, _ := img.ConfigFile()
	args := append([]string{"--userspec=" + cf.Config.User, root}, cf.Config.Entrypoint...)
	cmd := exec.Command(chroot, append(args, "demo")...)
	cmd.Env = append(cf.Config.Env, "HOME=/home/nonroot", "TMPDIR=/tmp")
	out, err = cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "protocol violations: 0") {
		t.Fatalf("demo in the image's filesystem as %s: %v\n%s", cf.Config.User, err, out)
	}
	t.Logf("demo ran in the image's filesystem as uid %s:\n%s", cf.Config.User, lastLines(string(out), 3))
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(l[max(0, len(l)-n):], "\n")
}
