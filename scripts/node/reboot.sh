#!/usr/bin/env bash
# Simulates a reboot of the node that scripts/node/up.sh DIR started, as a power cut and a
# boot: the control plane (etcd, the API server, the controllers, the scheduler) runs on, as it
# would on other machines, while everything of the node dies at once and comes back:
#   - SIGKILL to the kubelet, containerd, its shims and every container, and to the `sleep`
#     holding their mount namespace, so that all the node's mounts (overlays, volumes, FUSE
#     mounts of Pods) go away as at power-off; kube-proxy too;
#   - what a boot wipes is removed: containerd's state and runc's directory (tmpfs /run on a
#     real machine). What is on disk stays: containerd's root (the images), the kubelet's root,
#     the Pods' hostPath and PersistentVolume directories;
#   - a new mount namespace, containerd, the kubelet and kube-proxy start as up.sh starts
#     them. The kubelet finds its Pods in the API server and starts them again (new sandboxes,
#     restart counts up).
# Returns once the Node reports Ready with a heartbeat from the new kubelet.
# Usage: scripts/node/reboot.sh DIR (as root)
set -euo pipefail
cd "$(dirname "$0")/../.."

fail() {
  echo "node/reboot: $*" >&2
  exit 1
}

[ $# -eq 1 ] || fail "usage: scripts/node/reboot.sh DIR"
[ "$(id -u)" = 0 ] || fail "must run as root"
DIR=$(cd "$1" 2>/dev/null && pwd) || fail "$1 does not exist"
[ -f "$DIR/kubelet/config.yaml" ] || fail "$DIR is not a node started by scripts/node/up.sh"
# shellcheck source=scripts/node/lib.sh
source scripts/node/lib.sh
mapfile -t node_bins < <(scripts/node/build.sh)
kubelet=${node_bins[0]} proxy=${node_bins[2]} kubectl=${node_bins[3]}
kc() { "$kubectl" --kubeconfig "$DIR/admin.kubeconfig" --cache-dir "$DIR/kubectl-cache" "$@"; }

# Power off: every process of the node's cgroups but the control plane's.
keep=" "
for name in etcd kube-apiserver kube-controller-manager kube-scheduler; do
  keep+="$(cat "$DIR/run/$name.pid") "
done
for _ in $(seq 100); do
  victims=$(find "/sys/fs/cgroup/pids/$CGROUP" -name cgroup.procs -exec cat {} + 2>/dev/null |
    while read -r pid; do [[ "$keep" == *" $pid "* ]] || echo "$pid"; done)
  [ -z "$victims" ] && break
  # shellcheck disable=SC2086
  kill -KILL $victims 2>/dev/null || true
  sleep 0.1
done
[ -z "$victims" ] || fail "processes $victims survived SIGKILL"
booted_after=$(date -u +%Y-%m-%dT%H:%M:%SZ)
rm -rf "$DIR/containerd/state" "$DIR/containerd/runc"

# Boot.
start_containerd
start_kubelet "$kubelet"
start kube-proxy "$proxy" --config="$DIR/kube-proxy.yaml"

# Ready, as reported by the new kubelet (the old Ready condition may still stand).
heartbeat() {
  local ready
  ready=$(kc get node "$NODE_NAME" -o \
    jsonpath='{range .status.conditions[?(@.type=="Ready")]}{.status} {.lastHeartbeatTime}{end}')
  [ "${ready%% *}" = True ] && [[ "${ready#* }" > "$booted_after" || "${ready#* }" == "$booted_after" ]]
}
wait_for "the Node $NODE_NAME's heartbeat after the reboot" 120 heartbeat
