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
# The end-to-end tests run the operator, the agent and irctl as separate processes.
cargo build --workspace --bins
# --no-fail-fast: one failing test binary must not hide the others' results.
cargo test --workspace --all-targets --no-fail-fast "$@"
cargo test --workspace --doc --no-fail-fast "$@"
