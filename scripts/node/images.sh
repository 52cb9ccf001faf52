#!/usr/bin/env bash
# Builds the container images of the test node without a registry and imports them into a
# containerd:
#   localhost/instant-recovery/pause:1   the Pod sandbox image (pause.c, static)
#   docker.io/library/postgres:15        Debian bookworm with Debian's postgresql-15 packages
# Usage: scripts/node/images.sh [CONTAINERD_SOCKET]
# Without a socket it only builds. The image archives (docker-archive tarballs) are cached in
# $IR_CACHE_DIR/images/<name>-<hash>.tar, <hash> being a hash of their inputs (this script,
# pause.c), so they are built once (older ones are deleted); IR_CACHE_DIR defaults to $HOME/.cache/instant-recovery.
# Progress goes to stderr; stdout is one line per image, "<reference> <archive path>".
#
# How: mmdebstrap makes the Debian root file system (variant minbase, from the host's
# http://deb.debian.org mirror), umoci packs a directory as one layer of an OCI image layout
# (`umoci insert`) and sets its config, skopeo converts the layout to a docker-archive that
# names the image, and `ctr -n k8s.io images import` puts it where the kubelet's CRI looks
# (the k8s.io namespace) and unpacks it with the overlayfs snapshotter. Pods use these images
# with imagePullPolicy: Never. The postgres image has no entrypoint: Pods give the command,
# e.g. `su postgres -c '/usr/lib/postgresql/15/bin/initdb -D ... && exec .../postgres -D ...'`.
# The package postinst does not create a cluster (create_main_cluster = false), the image
# has no data directory of its own. As in the official image, user postgres is uid/gid 999
# (the chart's operator.postgres default) and PostgreSQL's bin directory is on PATH (the
# operator's Pods run `postgres` by name). About 1 minute for postgres (download and unpack),
# seconds for pause. Needs root (mmdebstrap in root mode keeps file owners).
set -euo pipefail
cd "$(dirname "$0")"

fail() {
  echo "node/images: $*" >&2
  exit 1
}

CACHE=${IR_CACHE_DIR:-$HOME/.cache/instant-recovery}
socket=${1:-}
for tool in gcc mmdebstrap umoci skopeo; do
  command -v "$tool" >/dev/null ||
    fail "$tool is missing (apt-get install gcc libc6-dev mmdebstrap umoci skopeo)"
done
[ -z "$socket" ] || command -v ctr >/dev/null || fail "ctr is missing (apt-get install containerd)"
[ "$(id -u)" = 0 ] || fail "must run as root (mmdebstrap and umoci keep file owners)"

script_hash=$(cat images.sh pause.c | sha256sum | cut -c1-16)
mkdir -p "$CACHE/images"

# pack REF ARCHIVE ROOTFS ENTRYPOINT...: ROOTFS as a one-layer image REF in docker-archive ARCHIVE.
pack() {
  local ref=$1 archive=$2 rootfs=$3 work
  shift 3
  work=$(dirname "$rootfs")
  umoci init --layout "$work/oci" >&2
  umoci new --image "$work/oci:img" >&2
  umoci insert --image "$work/oci:img" "$rootfs" / >&2
  local path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  [ "$ref" != docker.io/library/postgres:15 ] || path=/usr/lib/postgresql/15/bin:$path
  local config=(--config.env "PATH=$path")
  [ $# -eq 0 ] || config+=(--config.entrypoint "$1")
  umoci config --image "$work/oci:img" --architecture amd64 --os linux "${config[@]}" >&2
  skopeo copy --quiet "oci:$work/oci:img" "docker-archive:$archive.tmp.$$:$ref" >&2
  mv "$archive.tmp.$$" "$archive"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

pause_ref=localhost/instant-recovery/pause:1
pause_archive=$CACHE/images/pause-$script_hash.tar
if [ ! -f "$pause_archive" ]; then
  echo "building image $pause_ref" >&2
  mkdir -p "$work/pause/rootfs"
  gcc -static -Os -s -o "$work/pause/rootfs/pause" pause.c || fail "compiling pause.c failed"
  pack "$pause_ref" "$pause_archive" "$work/pause/rootfs" /pause
fi

postgres_ref=docker.io/library/postgres:15
postgres_archive=$CACHE/images/postgres-15-$script_hash.tar
if [ ! -f "$postgres_archive" ]; then
  echo "building image $postgres_ref (Debian bookworm, postgresql-15; about a minute)" >&2
  mkdir -p "$work/postgres"
  mmdebstrap --variant=minbase --include=postgresql-15,ca-certificates \
    --essential-hook='mkdir -p "$1/etc/postgresql-common" && echo "create_main_cluster = false" >"$1/etc/postgresql-common/createcluster.conf"' \
    --essential-hook='echo "postgres:x:999:999:PostgreSQL administrator:/var/lib/postgresql:/bin/bash" >>"$1/etc/passwd" && echo "postgres:x:999:" >>"$1/etc/group"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm "$work/postgres/rootfs" http://deb.debian.org/debian >&2 ||
    fail "mmdebstrap of the postgres root file system failed"
  pack "$postgres_ref" "$postgres_archive" "$work/postgres/rootfs"
fi

for old in "$CACHE"/images/pause-*.tar "$CACHE"/images/postgres-15-*.tar; do  # earlier inputs
  [ "$old" = "$pause_archive" ] || [ "$old" = "$postgres_archive" ] || rm -f "$old"
done

if [ -n "$socket" ]; then
  for archive in "$pause_archive" "$postgres_archive"; do
    ctr --address "$socket" -n k8s.io images import "$archive" >&2 ||
      fail "importing $archive into $socket failed"
  done
fi
echo "$pause_ref $pause_archive"
echo "$postgres_ref $postgres_archive"
