#!/usr/bin/env bash
# Builds the release binaries of every program of the workspace (ir-operator, ir-agent, irctl,
# kubectl-ir: each crate's bin targets) and copies them into OUT_DIR (default target/dist).
# The Dockerfile runs exactly this script, so a local release build and the image's binaries
# come from the same steps.
#
# Reproducible: --locked (the exact Cargo.lock), SOURCE_DATE_EPOCH (defaults to the last
# commit's time, or 0 outside a git checkout) for anything that embeds a date, and paths of the
# build machine remapped out of panic messages and debug info. Extra arguments go to
# `cargo build` (e.g. --target).
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "build-release: $*" >&2
  exit 1
}

out=${OUT_DIR:-target/dist}
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 0)
fi
export SOURCE_DATE_EPOCH
root=$(pwd)
export RUSTFLAGS="${RUSTFLAGS:-} --remap-path-prefix=$root=/src --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo"

# The CRD generator is a development tool that writes into the source tree; it is not shipped.
shipped=()
while IFS= read -r executable; do
  [ "$(basename "$executable")" = crdgen ] || shipped+=("$executable")
done < <(cargo build --release --locked --workspace --bins --message-format=json-render-diagnostics "$@" |
  sed -n 's/.*"executable":"\([^"]*\)".*/\1/p')
[ ${#shipped[@]} -gt 0 ] || fail "cargo reported no binaries"

mkdir -p "$out"
for executable in "${shipped[@]}"; do
  install -m 0755 "$executable" "$out/"
  echo "$out/$(basename "$executable")"
done
