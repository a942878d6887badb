# syntax=docker/dockerfile:1.7
#
# Images of kvstore, one target each (see docs/install.md):
#
#   docker build --target kv-server   -t kvstore/kv-server:0.1.0   .
#   docker build --target kv-gateway  -t kvstore/kv-gateway:0.1.0  .
#   docker build --target kv-operator -t kvstore/kv-operator:0.1.0 .
#   docker build --target kvstore     -t kvstore/kvstore:0.1.0     .
#
# One builder stage compiles every binary once (BuildKit caches the cargo registry and the
# target directory between builds); each target copies one binary onto debian trixie-slim.
# Why debian-slim and not distroless: the runtime needs no package at all, but the
# HEALTHCHECKs (used by docker-compose; Kubernetes ignores them and uses the probes the
# operator renders) need bash's /dev/tcp, as the binaries have no health-check mode.
# Builder and runtime are the same Debian release, so the glibc the binaries link against
# is the one they run on. For a release, pin both images by digest as well
# (`rust:1.95-slim-trixie@sha256:...`).
#
# Every image runs as UID/GID 65532, the user the operator's pods assume (runAsUser and
# fsGroup 65532 in operator/src/render/server.rs), with a numeric USER so that
# `runAsNonRoot: true` can verify it.

ARG VERSION=0.1.0
ARG REVISION=unknown

# ---------------------------------------------------------------------------------------------
FROM rust:1.95-slim-trixie AS build
WORKDIR /src
COPY . .
# rusqlite (bundled SQLite) and ring build C code: the slim Rust image has gcc and libc6-dev.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
        -p kv-server -p kv-gateway -p kv-operator -p kvstore \
    && mkdir -p /out \
    && cp target/release/kv-server target/release/kv-gateway \
          target/release/kv-operator target/release/kvstore /out/

# ---------------------------------------------------------------------------------------------
FROM debian:trixie-slim AS runtime
ARG VERSION
ARG REVISION
LABEL org.opencontainers.image.title="kvstore-runtime" \
      org.opencontainers.image.description="kvstore runtime base: debian slim, user 65532, /data" \
      org.opencontainers.image.vendor="kvstore" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="https://example.invalid/kvstore" \
      org.opencontainers.image.documentation="https://example.invalid/kvstore/docs/install.md" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="docker.io/library/debian:trixie-slim"
# The non-root user, and /data owned by it: a fresh named volume mounted on /data copies
# this ownership, so the server can write to it without running as root.
RUN groupadd --gid 65532 nonroot \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin nonroot \
    && mkdir /data \
    && chown 65532:65532 /data
# HEALTHCHECK of the server and gateway images: GET /health on 127.0.0.1:$KV_HEALTH_PORT
# with bash's /dev/tcp (no curl in the image), healthy on a 200 status line.
ENV KV_HEALTH_PORT=8080
WORKDIR /data

# ---------------------------------------------------------------------------------------------
FROM runtime AS kv-server
LABEL org.opencontainers.image.title="kv-server" \
      org.opencontainers.image.description="kvstore storage server: versioned keys in SQLite behind an LRU cache"
COPY --from=build /out/kv-server /usr/local/bin/kv-server
ENV KV_LISTEN=0.0.0.0:8080 \
    KV_DATA_DIR=/data \
    KV_HEALTH_PORT=8080
EXPOSE 8080
USER 65532:65532
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${KV_HEALTH_PORT} && printf 'GET /health HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && read -r -t 2 _ status _ <&3 && [[ $status == 200 ]]"]
ENTRYPOINT ["/usr/local/bin/kv-server"]

# ---------------------------------------------------------------------------------------------
FROM runtime AS kv-gateway
LABEL org.opencontainers.image.title="kv-gateway" \
      org.opencontainers.image.description="kvstore gateway: routes every key to its server on a consistent-hash ring"
COPY --from=build /out/kv-gateway /usr/local/bin/kv-gateway
ENV KV_GATEWAY_LISTEN=0.0.0.0:8000 \
    KV_HEALTH_PORT=8000
EXPOSE 8000
USER 65532:65532
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${KV_HEALTH_PORT} && printf 'GET /health HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && read -r -t 2 _ status _ <&3 && [[ $status == 200 ]]"]
ENTRYPOINT ["/usr/local/bin/kv-gateway"]

# ---------------------------------------------------------------------------------------------
# The operator only runs in Kubernetes, where the Deployment's liveness/readiness probes on
# /health replace a HEALTHCHECK (Kubernetes ignores image HEALTHCHECKs): none here.
FROM runtime AS kv-operator
LABEL org.opencontainers.image.title="kv-operator" \
      org.opencontainers.image.description="kvstore operator: runs KvClusters on Kubernetes"
COPY --from=build /out/kv-operator /usr/local/bin/kv-operator
ENV KV_OPERATOR_LISTEN=0.0.0.0:8080
EXPOSE 8080
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kv-operator"]

# ---------------------------------------------------------------------------------------------
# The command-line tool: a client (put/get/versions/servers/stats), `kvstore up` and
# `kvstore bench`. A one-shot tool, so no HEALTHCHECK; `kvstore up` inside it listens on 8000.
FROM runtime AS kvstore
LABEL org.opencontainers.image.title="kvstore" \
      org.opencontainers.image.description="kvstore command: local cluster, client and load generator"
COPY --from=build /out/kvstore /usr/local/bin/kvstore
EXPOSE 8000
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kvstore"]
