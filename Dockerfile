# syntax=docker/dockerfile:1
# The instant-recovery image: ir-operator, ir-agent, irctl and kubectl-ir on a slim Debian with
# FUSE 3. The Helm chart (charts/instant-recovery) runs the operator as uid 65532 and the agent
# as root (FUSE mounts); USER below is the operator's, the image's default.
#
#   docker build --build-arg SOURCE_DATE_EPOCH=$(git log -1 --format=%ct) \
#     --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) -t instant-recovery .
#
# Base images are pinned by version; a release pins them by digest as well by passing e.g.
# --build-arg RUNTIME_IMAGE=docker.io/library/debian:13.2-slim@sha256:<digest>.
ARG RUST_IMAGE=docker.io/library/rust:1.95.0-slim-trixie
ARG RUNTIME_IMAGE=docker.io/library/debian:13.2-slim

FROM ${RUST_IMAGE} AS build
ARG SOURCE_DATE_EPOCH=0
WORKDIR /src
COPY . .
# The same script builds a release outside the image; e2e/tests/dockerfile.rs checks that
# this stage runs it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH} OUT_DIR=/out scripts/build-release.sh

FROM ${RUNTIME_IMAGE}
ARG SOURCE_DATE_EPOCH=0
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="instant-recovery" \
      org.opencontainers.image.description="Brings a PostgreSQL backup online in seconds, copies it to production storage while it serves, and switches over without losing a commit." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/instant-recovery/instant-recovery"
# fuse3: fusermount3 for the agent's mounts; ca-certificates: TLS to S3 and the API server.
# The package versions are those of the pinned Debian point release's archive.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends fuse3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log /var/cache/ldconfig/aux-cache
COPY --from=build /out/ /usr/local/bin/
# Numeric, so that runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ir-operator"]
