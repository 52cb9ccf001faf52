#!/usr/bin/env bash
# The whole test suite, set-up included: unit, integration and end-to-end tests with real
# PostgreSQL, real FUSE mounts and a real S3-protocol server. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/test.sh runs as root (FUSE mounts, PostgreSQL as user postgres)" >&2; exit 1; }
scripts/setup-test-deps.sh
export RUST_BACKTRACE=1
cargo test --workspace --all-targets "$@"
cargo test --workspace --doc
