// Command image assembles the relay's container image as an OCI image
// layout, offline, from the static binary: what `make image` does where
// there is no Docker engine. It mirrors the runtime stage of the root
// Dockerfile (same user, entrypoint, command, environment, ports, volume,
// health check, stop signal and labels) on an empty base carrying the files
// the relay needs from distroless/static: the CA bundle (from this
// machine's Debian ca-certificates), /etc/passwd and /etc/group with the
// nonroot user 65532, and /tmp. image_test.go checks the result against the
// Dockerfile and runs the binary from the image's filesystem.
//
// It is a separate Go module so the relay's go.mod takes no
// go-containerregistry dependency.
//
//	go run . -binary ../../dist/o365relay -out ../../dist/oci -ref ghcr.io/o365relay/o365relay:VERSION
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Options describe the image.
type Options struct {
	Binary   []byte    // the static o365relay binary
	CABundle []byte    // PEM roots for Exchange's and Entra's TLS
	Arch     string    // GOARCH of the binary
	Version  string    // org.opencontainers.image.version
	Revision string    // org.opencontainers.image.revision
	Created  time.Time // file and config dates (SOURCE_DATE_EPOCH): reproducible
}

// Build returns the image.
func Build(o Options) (v1.Image, error) {
	rootfs, err := rootFS(o)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(rootfs)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, History: v1.History{
		Created: v1.Time{Time: o.Created}, CreatedBy: "o365relay deploy/image: the static binary, CA bundle, passwd, spool",
	}})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = o.Arch, "linux"
	cf.Created = v1.Time{Time: o.Created}
	cf.Config = v1.Config{
		User:       "65532:65532",
		Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin", "O365RELAY_SPOOL_DIR=/var/spool/o365relay", "O365RELAY_LOG_FORMAT=json"},
		Entrypoint: []string{"/o365relay"},
		Cmd:        []string{"serve"},
		ExposedPorts: map[string]struct{}{
			"2525/tcp": {}, "9025/tcp": {},
		},
		Volumes: map[string]struct{}{"/var/spool/o365relay": {}},
		Healthcheck: &v1.HealthConfig{
			Test:        []string{"CMD", "/o365relay", "healthcheck"},
			Interval:    30 * time.Second,
			Timeout:     10 * time.Second,
			StartPeriod: 60 * time.Second,
			Retries:     3,
		},
		StopSignal: "SIGTERM",
		Labels: map[string]string{
			"org.opencontainers.image.title":         "o365relay",
			"org.opencontainers.image.description":   "SMTP relay that forwards local unauthenticated mail to Exchange Online with OAuth2 (XOAUTH2, Entra ID client credentials)",
			"org.opencontainers.image.source":        "https://github.com/o365relay/o365relay",
			"org.opencontainers.image.url":           "https://github.com/o365relay/o365relay",
			"org.opencontainers.image.documentation": "https://github.com/o365relay/o365relay/tree/main/deploy",
			"org.opencontainers.image.version":       o.Version,
			"org.opencontainers.image.revision":      o.Revision,
		},
	}
	return mutate.ConfigFile(img, cf)
}

// rootFS is the image's only layer, as a tar with fixed owners and dates.
func rootFS(o Options) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, data []byte) error {
		h.ModTime, h.Format = o.Created, tar.FormatPAX
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	dir := func(name string, mode int64, uid int) *tar.Header {
		return &tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, Uid: uid, Gid: uid}
	}
	file := func(name string, mode int64) *tar.Header {
		return &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode}
	}
	passwd := "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
	group := "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n"
	for _, step := range []struct {
		h    *tar.Header
		data []byte
	}{
		{dir("etc/", 0o755, 0), nil},
		{file("etc/passwd", 0o644), []byte(passwd)},
		{file("etc/group", 0o644), []byte(group)},
		{dir("etc/ssl/", 0o755, 0), nil},
		{dir("etc/ssl/certs/", 0o755, 0), nil},
		{file("etc/ssl/certs/ca-certificates.crt", 0o644), o.CABundle},
		{dir("home/", 0o755, 0), nil},
		{dir("home/nonroot/", 0o700, 65532), nil},
		{dir("tmp/", 0o1777, 0), nil},
		{dir("var/", 0o755, 0), nil},
		{dir("var/spool/", 0o755, 0), nil},
		{dir("var/spool/o365relay/", 0o700, 65532), nil},
		{file("o365relay", 0o755), o.Binary},
	} {
		if err := add(step.h, step.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// WriteLayout writes img as the only image of an OCI layout at dir, named
// ref (org.opencontainers.image.ref.name).
func WriteLayout(dir string, img v1.Image, ref string) (layout.Path, error) {
	if err := os.RemoveAll(dir); err != nil {
		return "", err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return "", err
	}
	return p, p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": ref}))
}

func main() {
	bin := flag.String("binary", "", "the static o365relay binary (make build)")
	out := flag.String("out", "dist/oci", "OCI layout directory to write (replaced)")
	ref := flag.String("ref", "ghcr.io/o365relay/o365relay:dev", "image name and tag, recorded in the layout's index")
	ca := flag.String("ca", "/etc/ssl/certs/ca-certificates.crt", "CA bundle to include (Debian's ca-certificates)")
	arch := flag.String("arch", "amd64", "GOARCH of the binary")
	version := flag.String("version", "", "org.opencontainers.image.version label")
	revision := flag.String("revision", "", "org.opencontainers.image.revision label")
	flag.Parse()
	if err := run(*bin, *out, *ref, *ca, *arch, *version, *revision); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(bin, out, ref, ca, arch, version, revision string) error {
	b, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	roots, err := os.ReadFile(ca)
	if err != nil {
		return fmt.Errorf("CA bundle: %w (apt-get install ca-certificates)", err)
	}
	created := time.Unix(0, 0).UTC()
	if s, err := strconv.ParseInt(os.Getenv("SOURCE_DATE_EPOCH"), 10, 64); err == nil {
		created = time.Unix(s, 0).UTC()
	}
	img, err := Build(Options{Binary: b, CABundle: roots, Arch: arch, Version: version, Revision: revision, Created: created})
	if err != nil {
		return err
	}
	if _, err := WriteLayout(out, img, ref); err != nil {
		return err
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("wrote %s: %s@%s (OCI image layout; push with any OCI tool, e.g. skopeo copy oci:%s docker://%s)\n", out, ref, d, out, ref)
	return nil
}
