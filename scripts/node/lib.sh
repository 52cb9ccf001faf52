# Shared by scripts/node/up.sh and scripts/node/reboot.sh (sourced, from the repository's
# root): the node's fixed names and addresses, and how its daemons start. The caller sets DIR
# (the cluster's directory) and defines fail().

BRIDGE=irnode0
NODE_IP=10.244.0.1
NODE_NAME=ir-node
CGROUP=ir-node
V1_CONTROLLERS="cpu cpuacct cpuset memory devices freezer blkio pids systemd"

# The cgroups of the cluster's own processes, one per v1 hierarchy (up.sh creates them).
IR_NODE_CGROUPS=""
for c in $V1_CONTROLLERS; do IR_NODE_CGROUPS+=" /sys/fs/cgroup/$c/$CGROUP/system"; done
export IR_NODE_CGROUPS

# start NAME COMMAND...: runs COMMAND in the cluster's cgroups, in its own session, logging to
# DIR/logs/NAME.log (appended: a restarted daemon keeps its history), its PID in
# DIR/run/NAME.pid.
start() {
  local name=$1
  shift
  setsid bash -c 'for g in $IR_NODE_CGROUPS; do echo $$ >"$g/cgroup.procs"; done; exec "$@"' \
    bash "$@" </dev/null >>"$DIR/logs/$name.log" 2>&1 &
  echo $! >"$DIR/run/$name.pid"
}

# wait_for WHAT SECONDS COMMAND...: polls COMMAND every half second.
wait_for() {
  local what=$1 seconds=$2 tries=$(($2 * 2))
  shift 2
  until "$@" >/dev/null 2>&1; do
    tries=$((tries - 1))
    [ $tries -gt 0 ] || fail "$what is not up after $seconds s; see $DIR/logs"
    sleep 0.5
  done
}

# start_containerd: a new mount namespace with shared propagation, held by a `sleep`
# (DIR/run/mountns.pid), and containerd in it with DIR/containerd/config.toml.
start_containerd() {
  start mountns unshare -m --propagation shared sleep infinity
  wait_for "the mount namespace" 10 test -e "/proc/$(cat "$DIR/run/mountns.pid")/ns/mnt"
  sleep 0.2  # unshare execs sleep once the namespace is set up
  start containerd nsenter -m -t "$(cat "$DIR/run/mountns.pid")" -- \
    containerd --config "$DIR/containerd/config.toml"
  wait_for containerd 30 ctr --address "$DIR/containerd/containerd.sock" version
}

# start_kubelet KUBELET: the kubelet binary KUBELET in containerd's mount namespace, with
# DIR/kubelet/config.yaml.
start_kubelet() {
  start kubelet nsenter -m -t "$(cat "$DIR/run/mountns.pid")" -- \
    "$1" --config="$DIR/kubelet/config.yaml" --kubeconfig="$DIR/kubelet.kubeconfig" \
    --root-dir="$DIR/kubelet/root" --cert-dir="$DIR/kubelet/pki" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP"
}
