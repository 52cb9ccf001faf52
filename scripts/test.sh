#!/usr/bin/env bash
# The whole test suite, set-up included: unit, integration and end-to-end tests with real
# PostgreSQL, real FUSE mounts, a real S3-protocol server and a real Kubernetes control plane
# (etcd and kube-apiserver). Run as root. Extra arguments go
# to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/test.sh runs as root (FUSE mounts, PostgreSQL as user postgres)" >&2; exit 1; }
scripts/setup-test-deps.sh
export RUST_BACKTRACE=1
# The end-to-end tests run the operator, the agent, irctl and kubectl-ir as separate processes.
# They are built by the script the Dockerfile runs (dev profile here), so CI goes through the
# image's build steps too.
# SOURCE_DATE_EPOCH as that script sets it, exported for the tests too: C build scripts (zstd,
# ring, aws-lc) rebuild when it changes.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
export SOURCE_DATE_EPOCH
IR_BUILD_PROFILE=dev OUT_DIR=target/dist-dev scripts/build-release.sh >/dev/null
# --no-fail-fast: one failing test binary must not hide the others' results.
cargo test --workspace --all-targets --no-fail-fast "$@"
cargo test --workspace --doc --no-fail-fast "$@"
