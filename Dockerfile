# syntax=docker/dockerfile:1
#
# o365relay container image: a static binary on distroless, running as the
# distroless "nonroot" user (uid/gid 65532), with the spool as a volume.
#
#   docker build -t o365relay .
#   docker run --rm o365relay version
#
# Defaults are the binary's own: SMTP on 127.0.0.1:2525 and the admin
# endpoint on 127.0.0.1:9025. That is right for a sidecar (the application
# shares the pod's or container's loopback: `docker run --network
# container:<app>`), and it is deliberately NOT 0.0.0.0: the relay does no
# SMTP authentication, so anything that can reach the port can send as the
# mailbox. To serve other containers set BOTH
#   O365RELAY_LISTEN=0.0.0.0:2525
#   O365RELAY_ALLOWED_NETWORKS=<the clients' CIDRs, e.g. 172.17.0.0/16>
# (the relay refuses a non-loopback listen address without an explicit
# allowed-networks list), and O365RELAY_ADMIN_LISTEN=0.0.0.0:9025 if Prometheus
# or a kubelet httpGet probe must reach /metrics, /healthz, /readyz. EXPOSE
# below documents the ports; it opens nothing by itself.
#
# Nothing in this file was built or run on the machine it was written on (no
# Docker engine there); see deploy/README.md.

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
# Modules first, so source edits do not re-download them.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
# The context includes .git (see .dockerignore): Go (1.24+) stamps the main
# module's version and vcs.revision from it into the build info that
# `o365relay version` prints, so no -ldflags -X is needed. safe.directory
# covers builders that present the context with a foreign owner.
COPY . .
RUN git config --global --add safe.directory /src
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/o365relay ./cmd/o365relay
# Fail the build, not the deployment, if the binary does not start.
# (CGO_ENABLED=0 is what makes it static; deploy/check.sh verifies that.)
RUN /out/o365relay version
# distroless has no shell to mkdir/chown at run time: make the spool
# directory here, owner-only like the relay's own files, and COPY it with
# the runtime uid below.
RUN mkdir -p /out/spool && chmod 0700 /out/spool

FROM gcr.io/distroless/static-debian12:nonroot
# static-debian12 already carries /etc/ssl/certs/ca-certificates.crt (Go
# finds it; needed for login.microsoftonline.com and smtp.office365.com),
# /etc/passwd with nonroot=65532, and tzdata.
ARG VERSION=unknown
ARG REVISION=unknown
LABEL org.opencontainers.image.title="o365relay" \
      org.opencontainers.image.description="SMTP relay that forwards local unauthenticated mail to Exchange Online with OAuth2 (XOAUTH2, Entra ID client credentials)" \
      org.opencontainers.image.source="https://github.com/o365relay/o365relay" \
      org.opencontainers.image.url="https://github.com/o365relay/o365relay" \
      org.opencontainers.image.documentation="https://github.com/o365relay/o365relay/tree/main/deploy" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="gcr.io/distroless/static-debian12:nonroot"

COPY --from=build /out/o365relay /o365relay
COPY --from=build --chown=65532:65532 /out/spool /var/spool/o365relay

# Explicit so the image stays non-root even if the base tag changes.
USER 65532:65532
ENV O365RELAY_SPOOL_DIR=/var/spool/o365relay \
    O365RELAY_LOG_FORMAT=json
# Acknowledged mail lives here until Exchange accepts it: mount a named
# volume or a PersistentVolume, or a container replacement loses the queue.
VOLUME /var/spool/o365relay
EXPOSE 2525 9025

# `healthcheck` asks the admin listener's /readyz (O365RELAY_ADMIN_LISTEN;
# a wildcard address is probed on loopback), exit 0/1: healthy means mail
# handed over is safe (listener serving, spool writable with room), never
# "Entra ID answered" - `docker exec <name> /o365relay status` shows the path
# to Exchange. Exec form: there is no shell in the image. start-period
# covers the spool's recovery at start.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["/o365relay", "healthcheck"]

# SIGTERM drains (default 30 s, O365RELAY_SHUTDOWN_TIMEOUT); give `docker
# stop -t 45` or more so the runtime does not SIGKILL a drain in progress.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/o365relay"]
CMD ["serve"]
