#!/usr/bin/env bash
# Builds the release binaries of every program of the workspace (ir-operator, ir-agent, irctl,
# kubectl-ir: each crate's bin targets) and copies them into OUT_DIR (default target/dist).
# The Dockerfile runs exactly this script, so a local release build and the image's binaries
# come from the same steps.
#
# Reproducible: --locked (the exact Cargo.lock) and SOURCE_DATE_EPOCH (defaults to the last
# commit's time, or 0 outside a git checkout) for anything that embeds a date; the image builds
# in /src with cargo's home in /usr/local/cargo, so embedded paths are the same on every build.
# IR_BUILD_PROFILE (default release) picks another cargo profile, e.g. dev for a quick check of
# this script. Extra arguments go to `cargo build` (e.g. --target).
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

messages=$(cargo build --profile "${IR_BUILD_PROFILE:-release}" --locked --workspace --bins \
  --message-format=json-render-diagnostics "$@") || fail "cargo build failed"
# The CRD generator is a development tool that writes into the source tree; it is not shipped.
shipped=()
while IFS= read -r executable; do
  [ "$(basename "$executable")" = crdgen ] || shipped+=("$executable")
done < <(sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' <<<"$messages")
[ ${#shipped[@]} -gt 0 ] || fail "cargo reported no binaries"

mkdir -p "$out"
for executable in "${shipped[@]}"; do
  install -m 0755 "$executable" "$out/"
  echo "$out/$(basename "$executable")"
done
