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

# shellcheck source=scripts/lib/k8s-build.sh
. scripts/lib/k8s-build.sh

for name_minutes in kubelet:5 kube-scheduler:2 kube-proxy:2 kubectl:2; do
  build_k8s "${name_minutes%:*}" "${name_minutes#*:}"
  k8s_bin "${name_minutes%:*}"
done
