# o365relay build entry point. Everything runs with Go and Debian packages
# only; the packaging and chart tools are pinned Go tools in their own
# module (deploy/tools/go.mod) so the relay's go.mod stays small.
#
#   make build     static binary in dist/ with the version from git
#   make test      the README's test command (go test -race ./...)
#   make check     deploy/check.sh: Dockerfile, unit, manifests, chart, schema
#   make package   dist/*.deb and dist/*.rpm (o365relay, o365relay-sendmail)
#   make image     the container image: docker build if there is a Docker
#                  engine, else an OCI image layout in dist/oci (offline)
#   make chart     helm lint + helm template of deploy/helm/o365relay
#   make deb-test  install the .deb here (root), run it, purge it (CI does)

SHELL       := /bin/bash
GO          ?= go
GOARCH      ?= $(shell $(GO) env GOARCH)
TOOLS       := $(GO) tool -modfile=deploy/tools/go.mod
# The one image reference is the chart's image.repository; the examples
# under deploy/kubernetes use it too (deploy/kubernetes/validate checks).
IMAGE       ?= $(shell sed -n 's/^  repository: *//p' deploy/helm/o365relay/values.yaml)
# Version from git: the tag (v1.2.3 -> 1.2.3) on a tagged commit, else
# 0.0.0+gitYYYYMMDDhhmmss.<commit> (a valid Debian and RPM version, ordered
# by commit time); "+dirty" style suffixes are left to `o365relay version`,
# which also reports vcs.modified. Linked into relay/status, so `version`,
# /status and the build_info metric report it.
COMMIT      := $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
TAG         := $(shell git describe --tags --exact-match --match 'v[0-9]*' 2>/dev/null)
VERSION     ?= $(if $(TAG),$(patsubst v%,%,$(TAG)),0.0.0+git$(shell git log -1 --format=%cd --date=format:%Y%m%d%H%M%S 2>/dev/null || echo 0).$(COMMIT))
LDFLAGS     := -s -w -X github.com/o365relay/o365relay/relay/status.stampedVersion=$(VERSION)
# An image tag may not contain "+": 0.0.0-git….<commit> there.
IMAGE_TAG   := $(subst +,-,$(VERSION))
# File dates in the packages and the man page's date: the commit's.
export SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)

.PHONY: all build test check package deb rpm image chart deb-test clean
all: build

build: dist/o365relay

dist/o365relay: FORCE
	@mkdir -p dist
	CGO_ENABLED=0 $(GO) build -buildvcs=auto -trimpath -ldflags="$(LDFLAGS)" -o $@ ./cmd/o365relay
	./$@ version

test:
	$(GO) test -race ./...

check:
	bash deploy/check.sh

# The unit as packaged: the repository's unit with ExecStart at /usr/bin
# (packages must not use /usr/local). Fails if the line it edits moved.
dist/o365relay.service: deploy/systemd/o365relay.service
	@mkdir -p dist
	sed 's#^ExecStart=/usr/local/bin/o365relay #ExecStart=/usr/bin/o365relay #' $< >$@
	grep -qx 'ExecStart=/usr/bin/o365relay serve' $@

dist/o365relay.8.gz: dist/o365relay
	./dist/o365relay help --man | gzip -9n >$@

dist/copyright: LICENSE
	{ echo 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/'; \
	  echo 'Upstream-Name: o365relay'; echo 'Source: https://github.com/o365relay/o365relay'; echo; \
	  echo 'Files: *'; echo 'License: MIT'; echo; echo 'License: MIT'; sed 's/^$$/./; s/^/ /' $<; } >$@

# Debian wants a changelog in every package; this one names the commit.
dist/changelog.Debian.gz: FORCE
	@mkdir -p dist
	{ echo "o365relay ($(VERSION)-1) unstable; urgency=medium"; echo; \
	  echo "  * Built from commit $(COMMIT); see the repository's history."; echo; \
	  echo " -- o365relay maintainers <o365relay@users.noreply.github.com>  $$(date -R -u -d @$(SOURCE_DATE_EPOCH))"; } | gzip -9n >$@

PKG_FILES := dist/o365relay dist/o365relay.service dist/o365relay.8.gz dist/copyright dist/changelog.Debian.gz

package: deb rpm

deb rpm: $(PKG_FILES)
	rm -f dist/*.$@
	GOARCH=$(GOARCH) PKG_VERSION=$(VERSION) $(TOOLS) nfpm package -f deploy/package/nfpm.yaml -p $@ -t dist/
	GOARCH=$(GOARCH) PKG_VERSION=$(VERSION) $(TOOLS) nfpm package -f deploy/package/nfpm-sendmail.yaml -p $@ -t dist/

# Install the .deb on this machine, use it, purge it, and check that
# nothing is left behind (root; CI runs it on its throwaway machine).
deb-test: deb
	bash deploy/package/deb-test.sh dist

image: dist/o365relay
	@if command -v docker >/dev/null && docker info >/dev/null 2>&1; then \
		docker build --build-arg VERSION=$(VERSION) --build-arg REVISION=$(COMMIT) -t $(IMAGE):$(IMAGE_TAG) . ; \
	else \
		echo "no Docker engine: writing an OCI image layout to dist/oci instead"; \
		cd deploy/image && GOWORK=off $(GO) run . -binary ../../dist/o365relay -out ../../dist/oci -ref $(IMAGE):$(IMAGE_TAG) -arch $(GOARCH) -version $(VERSION) -revision $(COMMIT); \
	fi

chart:
	@mkdir -p dist
	$(TOOLS) helm lint --strict -f deploy/helm/o365relay/ci/test-values.yaml deploy/helm/o365relay
	$(TOOLS) helm template o365relay deploy/helm/o365relay -f deploy/helm/o365relay/ci/test-values.yaml >dist/chart.yaml

clean:
	rm -rf dist

FORCE:
