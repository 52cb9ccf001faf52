#!/usr/bin/env bash
# Builds the project's image as the Dockerfile's runtime stage does, without Docker or a
# registry, and imports it into a containerd:
#   localhost/instant-recovery:e2e   Debian trixie slim-like (minbase) with fuse3 and
#                                    ca-certificates, ir-operator, ir-agent and irctl in
#                                    /usr/local/bin, USER 65532:65532, ENTRYPOINT ir-operator
# Usage: scripts/node/project-image.sh BIN_DIR [CONTAINERD_SOCKET]
# BIN_DIR holds the built binaries (target/debug after `cargo build --workspace --bins`, or
# the OUT_DIR of scripts/build-release.sh). Without a socket it only builds.
# Cached in $IR_CACHE_DIR/images: the Debian part (base-<hash>.tar, a tarball of the root file
# system; hash of this script) once, the image (instant-recovery-<hash>.tar, a docker-archive;
# hash of this script and the binaries) per set of binaries; older ones are deleted.
# Progress goes to stderr; stdout is "<reference> <archive path>". Needs root.
# The Debian release is the one of the Dockerfile's RUNTIME_IMAGE (debian:13.2-slim: trixie).
set -euo pipefail
[ $# -ge 1 ] && [ -d "$1" ] && set -- "$(cd "$1" && pwd)" "${@:2}"
cd "$(dirname "$0")"

fail() {
  echo "node/project-image: $*" >&2
  exit 1
}

[ $# -ge 1 ] || fail "usage: scripts/node/project-image.sh BIN_DIR [CONTAINERD_SOCKET]"
bin_dir=$1
socket=${2:-}
CACHE=${IR_CACHE_DIR:-$HOME/.cache/instant-recovery}
BINARIES=(ir-operator ir-agent irctl)
for tool in mmdebstrap umoci skopeo; do
  command -v "$tool" >/dev/null || fail "$tool is missing (apt-get install mmdebstrap umoci skopeo)"
done
[ -z "$socket" ] || command -v ctr >/dev/null || fail "ctr is missing (apt-get install containerd)"
[ "$(id -u)" = 0 ] || fail "must run as root (mmdebstrap and umoci keep file owners)"
for b in "${BINARIES[@]}"; do
  [ -x "$bin_dir/$b" ] || fail "$bin_dir/$b is missing: run cargo build --workspace --bins first"
done
grep -q '^ARG RUNTIME_IMAGE=docker.io/library/debian:13\.' ../../Dockerfile ||
  fail "the Dockerfile's RUNTIME_IMAGE is no longer Debian 13 (trixie): update this script"

script_hash=$(sha256sum <project-image.sh | cut -c1-16)
image_hash=$( (cat project-image.sh; for b in "${BINARIES[@]}"; do cat "$bin_dir/$b"; done) |
  sha256sum | cut -c1-16)
mkdir -p "$CACHE/images"
base=$CACHE/images/base-trixie-$script_hash.tar
ref=localhost/instant-recovery:e2e
archive=$CACHE/images/instant-recovery-$image_hash.tar

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ ! -f "$base" ]; then
  echo "building the Debian trixie root file system with fuse3, ca-certificates (about a minute)" >&2
  mmdebstrap --variant=minbase --include=fuse3,ca-certificates \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/apt "$1"/var/log/dpkg.log' \
    trixie "$work/base.tar" http://deb.debian.org/debian >&2 ||
    fail "mmdebstrap of the trixie root file system failed"
  mv "$work/base.tar" "$base"
fi

if [ ! -f "$archive" ]; then
  echo "building image $ref from $bin_dir" >&2
  mkdir -p "$work/rootfs" "$work/bin/usr/local/bin"
  tar -C "$work/rootfs" -xf "$base"
  for b in "${BINARIES[@]}"; do
    install -m 0755 "$bin_dir/$b" "$work/bin/usr/local/bin/$b"
  done
  umoci init --layout "$work/oci" >&2
  umoci new --image "$work/oci:img" >&2
  umoci insert --image "$work/oci:img" "$work/rootfs" / >&2
  umoci insert --image "$work/oci:img" "$work/bin" / >&2
  umoci config --image "$work/oci:img" --architecture amd64 --os linux \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.user 65532:65532 --config.entrypoint /usr/local/bin/ir-operator >&2
  skopeo copy --quiet "oci:$work/oci:img" "docker-archive:$archive.tmp.$$:$ref" >&2
  mv "$archive.tmp.$$" "$archive"
fi

for old in "$CACHE"/images/base-trixie-*.tar "$CACHE"/images/instant-recovery-*.tar; do
  [ "$old" = "$base" ] || [ "$old" = "$archive" ] || rm -f "$old"
done

if [ -n "$socket" ]; then
  ctr --address "$socket" -n k8s.io images import "$archive" >&2 ||
    fail "importing $archive into $socket failed"
fi
echo "$ref $archive"
