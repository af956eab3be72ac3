#!/usr/bin/env bash
# Offline validation of the deployment files (Dockerfile, systemd unit,
# Kubernetes manifests). Needs only Go, the Go module proxy (first run) and
# Debian packages; no Docker engine, no cluster, no systemd running.
#
#   bash deploy/check.sh            # from anywhere in the repository
#
# Uses, when installed (Debian packages; each missing one is a printed SKIP):
#   systemd   -> systemd-analyze verify / security --offline (Debian 12: 252)
#   prometheus -> promtool check/test rules for deploy/prometheus
#   yamllint  -> YAML syntax and style of the manifests
#   hadolint  -> not packaged by Debian; used if someone put it on PATH
#               (BuildKit's own checks run instead, from deploy/dockerfile)
# Exit status is non-zero if any check failed; skips do not fail.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

# Hardening must not regress: systemd-analyze security's exposure score
# (0 = best, 10 = worst) for the unit; 1.2 when this was written.
max_exposure="${O365RELAY_MAX_EXPOSURE:-1.5}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

passed=0 failed=0 skipped=0
declare -a summary=()
pass() { passed=$((passed + 1)); summary+=("PASS  $1"); echo "PASS: $1"; }
fail() { failed=$((failed + 1)); summary+=("FAIL  $1"); echo "FAIL: $1" >&2; }
skip() { skipped=$((skipped + 1)); summary+=("SKIP  $1"); echo "SKIP: $1"; }
section() { printf '\n== %s ==\n' "$1"; }
have() { command -v "$1" >/dev/null 2>&1; }

# ---------------------------------------------------------------------------
section "binary (the Dockerfile's build step)"
bin=""
if ! have go; then
	skip "go not installed: binary not built"
elif [ ! -d cmd/o365relay ]; then
	skip "cmd/o365relay not present: binary not built"
elif CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$work/o365relay" ./cmd/o365relay; then
	bin="$work/o365relay"
	# The distroless static image has no libc: the binary must be static.
	if go version -m "$bin" | grep -q 'CGO_ENABLED=0' && ! ldd "$bin" >/dev/null 2>&1; then
		pass "static binary builds with the Dockerfile's command"
	else
		fail "binary is not static (CGO_ENABLED=0, no dynamic section expected)"
	fi
	# The Dockerfile runs `o365relay version` after building.
	if "$bin" version >"$work/version.out" 2>&1; then
		pass "o365relay version: $(head -n1 "$work/version.out")"
	else
		fail "o365relay version failed: $(head -n3 "$work/version.out")"
	fi
else
	fail "CGO_ENABLED=0 go build ./cmd/o365relay"
fi

# ---------------------------------------------------------------------------
section "Dockerfile and .dockerignore"
# No Docker engine here, so the image is not built; these are the
# properties the deployment relies on, checked as text.
df=Dockerfile
dockerfile_ok=1
need() { # need <description> <extended regex>
	if ! grep -Eq "$2" "$df"; then
		echo "  missing: $1" >&2
		dockerfile_ok=0
	fi
}
need "golang 1.26 bookworm builder stage" '^FROM golang:\$\{GO_VERSION\}-bookworm AS build|^FROM golang:1\.26-bookworm AS build'
need "GO_VERSION=1.26" '^ARG GO_VERSION=1\.26$'
need "distroless static nonroot runtime" '^FROM gcr\.io/distroless/static-debian12:nonroot$'
need "static build command" 'CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" .*\./cmd/o365relay'
need "non-root user 65532" '^USER 65532:65532$'
need "spool copied with the runtime owner" '^COPY --from=build --chown=65532:65532 /out/spool /var/spool/o365relay$'
need "spool volume" '^VOLUME /var/spool/o365relay$'
need "exposed ports" '^EXPOSE 2525 9025$'
need "exec-form healthcheck" 'CMD \["/o365relay", "healthcheck"\]'
need "entrypoint" '^ENTRYPOINT \["/o365relay"\]$'
need "default command" '^CMD \["serve"\]$'
need "OCI source label" 'org\.opencontainers\.image\.source='
if grep -Eq '^ADD ' "$df"; then echo "  ADD used (use COPY)" >&2; dockerfile_ok=0; fi
if grep -Eq '^ENV .*O365RELAY_LISTEN=0\.0\.0\.0' "$df"; then
	echo "  the image must not default to a non-loopback SMTP listener" >&2
	dockerfile_ok=0
fi
if grep -Eiq 'InsecureSkipVerify|--insecure|curl .*-k ' "$df"; then echo "  TLS verification disabled" >&2; dockerfile_ok=0; fi
if [ "$dockerfile_ok" = 1 ]; then pass "Dockerfile has the required properties"; else fail "Dockerfile"; fi

di=.dockerignore
ignore_ok=1
for p in '**/*.pem' '**/*.pfx' '**/*.key' '**/*.env'; do
	grep -qxF -- "$p" "$di" || { echo "  .dockerignore lacks $p" >&2; ignore_ok=0; }
done
# .git stays in the context: go build stamps the version from it.
if grep -Eq '^/?\.git/?$' "$di"; then echo "  .dockerignore excludes .git (no VCS version stamp)" >&2; ignore_ok=0; fi
if [ "$ignore_ok" = 1 ]; then pass ".dockerignore keeps secrets out and .git in"; else fail ".dockerignore"; fi

# BuildKit's build checks (what `docker build --check` runs), offline, and
# the .dockerignore semantics: a separate Go module, like the manifests'.
if ! have go; then
	skip "go not installed: BuildKit build checks not run"
elif (cd deploy/dockerfile && GOWORK=off GOFLAGS=-mod=readonly go test -count=1 ./...); then
	pass "Dockerfile passes BuildKit's build checks; .dockerignore excludes keys, keeps .git and tracked files"
else
	fail "BuildKit build checks / .dockerignore (deploy/dockerfile)"
fi

# The image assembled offline as an OCI layout (what `make image` does
# without a Docker engine), from the binary built above: valid layout,
# reproducible digest, configuration equal to the Dockerfile's runtime
# stage, and, as root, the demo run in a chroot of the image's filesystem
# as uid 65532. A separate module (go-containerregistry).
if ! have go || [ -z "$bin" ]; then
	skip "no binary: OCI image layout not assembled"
elif (cd deploy/image && O365RELAY_BINARY="$bin" GOWORK=off GOFLAGS=-mod=readonly go test -count=1 ./...); then
	pass "OCI image layout from the static binary: valid, reproducible, configured as the Dockerfile; the demo runs in its filesystem"
else
	fail "OCI image layout (deploy/image)"
fi

if have hadolint; then
	if hadolint "$df"; then pass "hadolint Dockerfile"; else fail "hadolint Dockerfile"; fi
else
	skip "hadolint not installed (not packaged by Debian)"
fi

# ---------------------------------------------------------------------------
section "systemd unit"
unit=deploy/systemd/o365relay.service
if have systemd-analyze; then
	# verify needs ExecStart to exist: use the binary built above, or
	# /bin/true, at the unit's path. Same file name, so the unit name and
	# its specifiers stay as installed.
	mkdir -p "$work/unit"
	sed "s#^ExecStart=/usr/local/bin/o365relay #ExecStart=${bin:-/bin/true} #" "$unit" >"$work/unit/o365relay.service"
	if ! grep -q "^ExecStart=${bin:-/bin/true} serve$" "$work/unit/o365relay.service"; then
		fail "could not point ExecStart at a stub (ExecStart line changed?)"
	else
		# verify exits 0 on unknown keys and bad values (it only warns), so
		# any message about our unit counts as a failure.
		set +e
		systemd-analyze verify "$work/unit/o365relay.service" >"$work/verify.out" 2>&1
		rc=$?
		set -e
		if [ "$rc" -ne 0 ] || grep -Eq 'o365relay\.service|Unknown|[Ii]nvalid|[Ff]ailed to parse|ignoring' "$work/verify.out"; then
			cat "$work/verify.out" >&2
			fail "systemd-analyze verify $unit (exit $rc)"
		else
			[ -s "$work/verify.out" ] && sed 's/^/  note: /' "$work/verify.out"
			pass "systemd-analyze verify $unit"
		fi
		set +e
		systemd-analyze security --offline=yes --no-pager "$work/unit/o365relay.service" >"$work/security.out" 2>&1
		set -e
		score="$(sed -n 's/.*Overall exposure level for o365relay\.service: \([0-9.]*\).*/\1/p' "$work/security.out")"
		if [ -z "$score" ]; then
			tail -n 5 "$work/security.out" >&2
			fail "systemd-analyze security --offline=yes: no score"
		else
			grep -E '^✗' "$work/security.out" | sed 's/^/  /' || true
			if awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s <= m) }'; then
				pass "systemd-analyze security exposure $score (<= $max_exposure)"
			else
				fail "systemd-analyze security exposure $score > $max_exposure"
			fi
		fi
	fi
else
	skip "systemd-analyze not installed (apt-get install systemd): unit not verified"
fi

# Every setting of the binary is documented in the env example: the list
# is config.Settings(), compared by the config package's own test rather
# than a copy of the names here.
if ! have go; then
	skip "go not installed: env example not compared with config.Settings()"
elif go test -count=1 -run '^TestEnvExampleDocumentsEverySetting$' ./config >"$work/envexample.out" 2>&1; then
	pass "env example documents every setting of config.Settings()"
else
	sed 's/^/  /' "$work/envexample.out" >&2
	fail "env example does not document every setting (go test ./config -run TestEnvExampleDocumentsEverySetting)"
fi
# The unit wires the spool and the credential as documented.
env_ok=1
if grep -Eq '^[A-Z]' deploy/systemd/o365relay.env.example; then
	echo "  env example sets a variable (everything must stay commented)" >&2
	env_ok=0
fi
for line in 'Type=notify' 'DynamicUser=yes' 'StateDirectory=o365relay' 'Environment=O365RELAY_SPOOL_DIR=%S/o365relay' \
	'LoadCredential=o365relay.pem:/etc/o365relay/o365relay.pem' 'Environment=AZURE_CLIENT_CERTIFICATE_PATH=%d/o365relay.pem' \
	'ExecReload=/bin/kill -HUP $MAINPID' 'TimeoutStopSec=60' 'CapabilityBoundingSet=' 'SystemCallErrorNumber=EPERM' \
	'RestartPreventExitStatus=2'; do
	grep -qxF -- "$line" "$unit" || { echo "  unit lacks: $line" >&2; env_ok=0; }
done
if [ "$env_ok" = 1 ]; then pass "unit wires spool and credential; env example sets nothing"; else fail "unit/env example"; fi

# ---------------------------------------------------------------------------
section "Kubernetes manifests"
if have yamllint; then
	if yamllint -s -d '{extends: default, rules: {line-length: {max: 120}, document-start: disable, comments: {min-spaces-from-content: 1}, comments-indentation: disable, octal-values: {forbid-implicit-octal: false}}}' deploy/kubernetes; then
		pass "yamllint deploy/kubernetes"
	else
		fail "yamllint deploy/kubernetes"
	fi
else
	skip "yamllint not installed (apt-get install yamllint)"
fi
# ---------------------------------------------------------------------------
section "Helm chart (deploy/helm/o365relay)"
# helm v4 is a pinned Go tool (deploy/tools); the first build compiles it
# (a few minutes on 2 cores), the Go build cache keeps it. The renders go
# to the manifest validator below, with the same rules as the manifests.
render=""
if ! have go; then
	skip "go not installed: chart not linted"
else
	helm() { go tool -modfile=deploy/tools/go.mod helm "$@"; }
	chart=deploy/helm/o365relay
	render="$work/chart"
	mkdir -p "$render"
	if helm lint --strict -f $chart/ci/test-values.yaml $chart >"$work/lint.out" 2>&1 &&
		helm lint --strict -f $chart/ci/workload-identity-values.yaml $chart >>"$work/lint.out" 2>&1; then
		pass "helm lint --strict (certificate and workload identity values)"
	else
		cat "$work/lint.out" >&2
		fail "helm lint"
	fi
	# Without the required values the install must stop and say which.
	if helm template o365relay $chart >"$work/noval.out" 2>&1 || ! grep -q 'config.tenantId' "$work/noval.out"; then
		cat "$work/noval.out" >&2
		fail "helm template without values does not ask for config.tenantId"
	else
		pass "helm template without values stops: $(grep -o 'config.tenantId[^"]*' "$work/noval.out" | head -n1 | cut -c1-70)…"
	fi
	if helm template o365relay $chart -f $chart/ci/test-values.yaml >"$render/central.yaml" &&
		helm template o365relay $chart -f $chart/ci/workload-identity-values.yaml >"$render/wi.yaml" &&
		helm template o365relay $chart --set sidecarSnippet=true --show-only templates/sidecar-snippet.yaml >"$render/snippet.yaml" &&
		helm template o365relay $chart --set sidecarSnippet=true --set workloadIdentity.enabled=true --show-only templates/sidecar-snippet.yaml >"$render/snippet-wi.yaml"; then
		pass "helm template: $(grep -c '^kind:' "$render/central.yaml") objects (certificate), $(grep -c '^kind:' "$render/wi.yaml") (workload identity + monitors), sidecar snippet"
	else
		fail "helm template"
		render=""
	fi
fi

# ---------------------------------------------------------------------------
section "Kubernetes manifest validation"
# Strict decoding into k8s.io/api types + consistency rules: a separate Go
# module, so the relay's module takes no k8s.io dependency. GOWORK=off in
# case a go.work above would pull it into another build. With the chart
# rendered, the same run checks it, that every example's relay container
# is the chart's, the README's sidecar snippet and the one image reference.
if ! have go; then
	skip "go not installed: manifests not validated"
elif (cd deploy/kubernetes/validate && O365RELAY_CHART_RENDER="$render" GOWORK=off GOFLAGS=-mod=readonly go test -count=1 ./...); then
	if [ -n "$render" ]; then
		pass "manifests and the rendered chart decode strictly as k8s.io/api v0.37 and prometheus-operator objects and are consistent; examples and README snippet match the chart"
	else
		pass "manifests decode strictly as k8s.io/api v0.37 and prometheus-operator objects and are consistent (chart not rendered)"
	fi
else
	fail "Kubernetes manifest validation (deploy/kubernetes/validate)"
fi

# ---------------------------------------------------------------------------
section "Prometheus rules and dashboard"
if have yamllint; then
	# Alert annotations are one line each: longer lines allowed here.
	if yamllint -s -d '{extends: default, rules: {line-length: {max: 200}, document-start: disable, comments: {min-spaces-from-content: 1}, comments-indentation: disable}}' deploy/prometheus; then
		pass "yamllint deploy/prometheus"
	else
		fail "yamllint deploy/prometheus"
	fi
else
	skip "yamllint not installed (apt-get install yamllint)"
fi
if have promtool; then
	if promtool check rules deploy/prometheus/o365relay.rules.yml; then
		pass "promtool check rules deploy/prometheus/o365relay.rules.yml"
	else
		fail "promtool check rules"
	fi
	# Every alert has cases that must fire it and cases that must not.
	if (cd deploy/prometheus && promtool test rules o365relay.rules.test.yml); then
		pass "promtool test rules: every alert fires and stays quiet where it should"
	else
		fail "promtool test rules"
	fi
	# The dashboard's queries parse: each becomes a recording rule that
	# promtool checks ($instance as the regex the dashboard's "All" sends).
	if have python3 && python3 - "$work/dashboard.rules.yml" <<'PY'
import json, sys
d = json.load(open("deploy/prometheus/grafana-dashboard.json"))
exprs = [t["expr"].replace("$instance", ".*") for p in d["panels"] for t in p.get("targets", [])]
with open(sys.argv[1], "w") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, e in enumerate(exprs):
        f.write("      - record: dashboard:panel_%d\n        expr: %s\n" % (i, json.dumps(e)))
PY
	then
		if promtool check rules "$work/dashboard.rules.yml" >/dev/null; then
			pass "grafana-dashboard.json is JSON and every query parses"
		else
			promtool check rules "$work/dashboard.rules.yml" >&2 || true
			fail "grafana-dashboard.json queries"
		fi
	else
		fail "grafana-dashboard.json does not parse as JSON (or python3 missing)"
	fi
else
	skip "promtool not installed (apt-get install prometheus): rules not checked"
fi
# The PrometheusRule, PodMonitor and ServiceMonitor are decoded strictly by
# the manifest validator below (deploy/kubernetes/validate, TestMonitoring).

# ---------------------------------------------------------------------------
section "configuration schema (deploy/config)"
if ! have go; then
	skip "go not installed: schema not validated"
elif (cd deploy/config/validate && GOWORK=off GOFLAGS=-mod=readonly go test -count=1 ./...); then
	pass "o365relay.schema.json is valid draft 2020-12; the example validates, with every default on; mistakes fail"
else
	fail "configuration schema (deploy/config/validate)"
fi

# ---------------------------------------------------------------------------
section "summary"
printf '%s\n' "${summary[@]}"
echo "Not validated here: the Dockerfile was not built and no container was run (no Docker engine;"
echo "the OCI layout was checked and its filesystem run in a chroot instead);"
echo "no manifest or chart was applied to a cluster (schema + consistency checks only);"
echo "the unit is verified offline here; it runs under a real systemd in TestSystemdUnit (go test, as root)."
echo "deploy: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
