#!/usr/bin/env bash
# Builds the node-side Kubernetes binaries for a real single-node test cluster, once, from the
# Go module of tools/k8s/apiserver (the same k8s.io/kubernetes release as kube-apiserver),
# and caches them outside the repository:
#   $IR_CACHE_DIR/bin/kubelet-<version>
#   $IR_CACHE_DIR/bin/kube-scheduler-<version>
#   $IR_CACHE_DIR/bin/kube-proxy-<version>
#   $IR_CACHE_DIR/bin/kubectl-<version>
# IR_CACHE_DIR defaults to $HOME/.cache/instant-recovery. Quick when the binaries exist.
# Progress goes to stderr; stdout is exactly four lines, the paths above in that order.
# etcd, kube-apiserver and kube-controller-manager come from scripts/build-control-plane.sh.
#
# All four are built with CGO_ENABLED=0: the kubelet's cAdvisor and its cgroup and mount
# code are pure Go on Linux, and static binaries do not depend on the host's libc (the
# upstream release binaries are static too). -ldflags sets the version that --version, the
# Node's status.nodeInfo.kubeletVersion and /version report, as Kubernetes'
# hack/lib/version.sh does. Timing on 2 cores: the kubelet about 5 minutes with a cold Go
# build cache, about 80 s when kube-apiserver was built before; the others 1 to 2 minutes
# each.
set -euo pipefail
cd "$(dirname "$0")/../.."

fail() {
  echo "node/build: $*" >&2
  exit 1
}

CACHE=${IR_CACHE_DIR:-$HOME/.cache/instant-recovery}  # the rule of setup-test-deps.sh and e2e/src/s3.rs

k8s_version=$(awk '$1 == "k8s.io/kubernetes" {print $2}' tools/k8s/apiserver/go.mod)
[[ $k8s_version =~ ^v1\.([0-9]+)\.[0-9]+$ ]] ||
  fail "tools/k8s/apiserver/go.mod does not pin k8s.io/kubernetes to a v1.Y.Z release"
k8s_minor=${BASH_REMATCH[1]}

go=$(command -v go || echo /usr/local/go/bin/go)

k8s_ldflags="-s"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean"
done

# build_k8s NAME MINUTES: k8s.io/kubernetes/cmd/NAME into $CACHE/bin/NAME-<version>, once.
build_k8s() {
  local name=$1 minutes=$2 bin=$CACHE/bin/$1-$k8s_version
  if [ ! -x "$bin" ]; then
    [ -x "$go" ] || fail "Go >= 1.26 is needed to build $name"
    echo "building $name $k8s_version with $("$go" version) (once, about $minutes minutes on 2 cores; cached in $CACHE/bin)" >&2
    mkdir -p "$CACHE/bin"
    (cd tools/k8s/apiserver && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=readonly "$go" build \
      -trimpath -ldflags="$k8s_ldflags" -o "$bin.tmp.$$" "k8s.io/kubernetes/cmd/$name") ||
      fail "building $name $k8s_version failed"
    mv "$bin.tmp.$$" "$bin"
  fi
  echo "$bin"
}
build_k8s kubelet 5
build_k8s kube-scheduler 2
build_k8s kube-proxy 2
build_k8s kubectl 2
