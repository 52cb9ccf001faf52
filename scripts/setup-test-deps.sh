#!/usr/bin/env bash
# Installs what the demo and the tests need, and is quick when everything is already there:
#   - Debian packages: PostgreSQL 15 (server, client, pgbench), fuse3
#   - a real S3-protocol server for the tests, built from its Go module pinned in tools/s3/go.mod
#     (Versity S3 Gateway over a local directory: a maintained, semver-tagged S3 server that
#     `go build` handles without replace directives), cached outside the repository.
# --runtime-only skips the S3 server (the demo needs PostgreSQL and FUSE only).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${IR_CACHE_DIR:-$HOME/.cache/instant-recovery}
runtime_only=false
[ "${1:-}" = "--runtime-only" ] && runtime_only=true

need=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql-15)
[ -x /usr/lib/postgresql/15/bin/pg_basebackup ] || need+=(postgresql-client-15)
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v runuser >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
id postgres >/dev/null 2>&1 || { echo "user postgres is missing after installing postgresql-15" >&2; exit 1; }
[ -e /dev/fuse ] || { echo "/dev/fuse is missing: FUSE mounts cannot work here" >&2; exit 1; }
if [ -f /etc/fuse.conf ] && ! grep -q '^user_allow_other' /etc/fuse.conf; then
  echo user_allow_other >> /etc/fuse.conf
fi

$runtime_only && exit 0

version=$(awk '$1 == "github.com/versity/versitygw" {print $2}' tools/s3/go.mod)
[ -n "$version" ] || { echo "tools/s3/go.mod does not pin github.com/versity/versitygw" >&2; exit 1; }
bin=$CACHE/bin/versitygw-$version
if [ ! -x "$bin" ]; then
  command -v go >/dev/null || { echo "go is needed to build the S3 test server" >&2; exit 1; }
  echo "building versitygw $version (once; cached in $CACHE/bin)"
  mkdir -p "$CACHE/bin"
  (cd tools/s3 && go build -trimpath -o "$bin.tmp" github.com/versity/versitygw/cmd/versitygw)
  mv "$bin.tmp" "$bin"
fi
ln -sfn "$bin" "$CACHE/bin/versitygw"
echo "S3 test server: $bin"
