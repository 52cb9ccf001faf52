#!/usr/bin/env bash
# Starts a whole single-node Kubernetes cluster on this machine, with a real kubelet and
# containerd that run Pods: a bridge, etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, containerd, the kubelet and kube-proxy. Everything it makes goes in DIR
# (certificates, kubeconfigs, logs in DIR/logs, PID files in DIR/run, etcd's data, containerd's
# root and state, the kubelet's root, the CNI configuration and IP leases), except what is
# machine-wide by nature: the bridge, the cgroups, iptables rules, a few sysctls (saved in
# DIR/host.env and restored by down.sh), the shim sockets that containerd 1.6 always puts in
# /run/containerd/s and the network namespace files it puts in /run/netns.
# scripts/node/down.sh DIR undoes all of it, also after a failed start.
# Usage: scripts/node/up.sh DIR [ARCHIVE...]   (as root; DIR must not exist or be empty)
# Each ARCHIVE (a docker-archive, such as scripts/node/project-image.sh makes) is imported
# into containerd with the node's own images.
# Prints nothing on stdout; when it returns the Node is Ready and DIR/admin.kubeconfig is the
# admin's kubeconfig (client certificate in group system:masters). Only one such cluster runs
# on a machine at a time: the bridge, the node's IP address and kube-proxy's iptables chains
# are machine-wide. Fails, and says why, when the machine cannot run it (not root, no
# overlayfs, cgroup v1 controllers missing, a cluster already up).
#
# Binaries: scripts/build-control-plane.sh (etcd, kube-apiserver, kube-controller-manager)
# and scripts/node/build.sh (kubelet, kube-scheduler, kube-proxy, kubectl), both cached;
# Debian's containerd 1.6, runc and containernetworking-plugins (CNI plugins in /usr/lib/cni).
# Images: scripts/node/images.sh (pause, postgres:15), imported into containerd before the
# kubelet starts; Pods use them with imagePullPolicy: Never (there is no registry).
#
# Network: the bridge $BRIDGE holds the node's IP address $NODE_IP, which is also the Pods'
# gateway (CNI bridge plugin, host-local IPAM over $POD_CIDR). The API server listens there,
# not on loopback: Pods reach it through the `kubernetes` Service (kube-proxy DNATs
# 10.96.0.1:443 to $NODE_IP:6443), and the endpoint reconciler refuses a loopback
# --advertise-address. etcd listens on $NODE_IP too, so that it never collides with the
# tests' loopback etcds. The host reaches Pod IPs and ClusterIPs directly (routes of the
# bridge and kube-proxy's OUTPUT rules). net.ipv4.ip_forward is set to 1 (a Pod reaching a
# ClusterIP is forwarded back onto the bridge).
#
# Why the non-obvious settings:
#   unshare -m --propagation shared: containerd and the kubelet run in their own mount
#     namespace whose mounts are shared, so that mountPropagation: Bidirectional and
#     HostToContainer work (they need a shared mount under the kubelet's root) without
#     changing the propagation of the host's own root mount (private here). The namespace is
#     held by a `sleep` (DIR/run/mountns.pid); its mounts (overlays, volumes) are invisible on
#     the host and go away with its processes. `nsenter -m -t $(cat DIR/run/mountns.pid)`
#     shows them.
#   Cgroups: cgroup v1 only on this machine, so the kubelet needs failCgroupV1: false and the
#     cgroupfs driver (no systemd). Every process of the cluster runs in /$CGROUP/system and
#     the Pods in /$CGROUP/kubepods (the kubelet's cgroupRoot), in each v1 hierarchy, so that
#     down.sh finds every process (shims and containers included) and removes the cgroups.
#   restrict_oom_score_adj = true (containerd's CRI plugin): the kubelet asks for OOM score
#     adjustments below the current one, which needs CAP_SYS_RESOURCE; without it runc fails
#     with "can't get final child's PID from pipe".
#   The kubelet's protectKernelDefaults is false, so it sets vm.overcommit_memory,
#     vm.panic_on_oom, kernel.panic, kernel.panic_on_oops and kernel.keys.root_max*; kube-proxy
#     is told not to touch conntrack sysctls nor route_localnet (localhostNodePorts: false).
#     up.sh saves those sysctls and down.sh restores them.
#   kube-proxy masqueradeAll: a Pod reaching a Service whose backend is on the same bridge
#     gets the reply through the host, not straight over the bridge.
#   The kubelet serves (logs, exec) on $NODE_IP:10250 with a self-signed certificate; it
#     accepts client certificates signed by the cluster CA only (the API server's
#     --kubelet-client-certificate) and authorizes them all. --kubelet-preferred-address-types
#     =InternalIP: the node's name is not resolvable.
#   Image garbage collection and disk eviction are practically off (imageGCHighThreshold 100%,
#     evictionHard 1%): the images cannot be pulled back.
set -euo pipefail
cd "$(dirname "$0")/../.."

# shellcheck source=scripts/node/lib.sh
source scripts/node/lib.sh
fail() {
  echo "node/up: $*" >&2
  exit 1
}

[ $# -ge 1 ] || fail "usage: scripts/node/up.sh DIR [ARCHIVE...]"
for archive in "${@:2}"; do
  [ -f "$archive" ] || fail "$archive is not a file"
done
[ "$(id -u)" = 0 ] || fail "must run as root"
mkdir -p "$1"
DIR=$(cd "$1" && pwd)
[ -z "$(ls -A "$DIR")" ] || fail "$DIR is not empty (scripts/node/down.sh $DIR, then remove it)"

POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/16
SYSCTLS="net.ipv4.ip_forward vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes"

# What the machine must offer.
grep -qw overlay /proc/filesystems || fail "the kernel has no overlayfs (containerd's snapshotter)"
for c in $V1_CONTROLLERS; do
  [ -f "/sys/fs/cgroup/$c/cgroup.procs" ] ||
    fail "no cgroup v1 hierarchy at /sys/fs/cgroup/$c (this setup needs the v1 controllers $V1_CONTROLLERS)"
done
for tool in containerd containerd-shim-runc-v2 runc ctr unshare nsenter iptables ip openssl; do
  command -v "$tool" >/dev/null ||
    fail "$tool is missing (apt-get install containerd runc containernetworking-plugins iptables iproute2 openssl util-linux)"
done
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] ||
  fail "CNI plugins are missing in /usr/lib/cni (apt-get install containernetworking-plugins)"
! ip link show "$BRIDGE" >/dev/null 2>&1 ||
  fail "the bridge $BRIDGE exists: a cluster is up already (scripts/node/down.sh on its DIR)"
[ ! -d "/sys/fs/cgroup/pids/$CGROUP" ] ||
  fail "the cgroup /$CGROUP exists: a cluster is up already (scripts/node/down.sh on its DIR)"

mapfile -t control_plane < <(scripts/build-control-plane.sh)
mapfile -t node_bins < <(scripts/node/build.sh)
etcd=${control_plane[0]} apiserver=${control_plane[1]} controller_manager=${control_plane[2]}
kubelet=${node_bins[0]} scheduler=${node_bins[1]} proxy=${node_bins[2]} kubectl=${node_bins[3]}

mkdir -p "$DIR"/{pki,logs,run,etcd,containerd,kubelet,cni/net.d,cni/networks,pod-logs}

# The host state down.sh restores or removes. Written before anything changes.
{
  echo "BRIDGE=$BRIDGE"
  echo "CGROUP=$CGROUP"
  echo "V1_CONTROLLERS=\"$V1_CONTROLLERS\""
  for s in $SYSCTLS; do echo "SAVED_SYSCTLS+=($s=$(sysctl -n "$s"))"; done
  for p in /run/containerd /run/netns /var/lib/cni /var/log/containers; do
    [ -e "$p" ] || echo "CREATED+=($p)"
  done
  command -v nft >/dev/null && echo "NFT_TABLES=\"$(nft list tables | tr '\n' ',')\""
} >"$DIR/host.env"

# Certificates (ECDSA P-256): a CA, the API server's serving certificate, a client
# certificate per component (the name and groups the bootstrap RBAC roles expect), and the
# service account signing key.
pki=$DIR/pki
openssl_q() { openssl "$@" 2>/dev/null; }
openssl_q ecparam -name prime256v1 -genkey -noout -out "$pki/ca.key"
openssl_q req -x509 -new -key "$pki/ca.key" -subj /CN=ir-node-ca -days 3650 -out "$pki/ca.crt"
# cert NAME SUBJECT EXTENSIONS
cert() {
  openssl_q ecparam -name prime256v1 -genkey -noout -out "$pki/$1.key"
  openssl_q req -new -key "$pki/$1.key" -subj "$2" -out "$pki/$1.csr"
  printf '%s\n' "$3" >"$pki/$1.ext"
  openssl_q x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -extfile "$pki/$1.ext" -out "$pki/$1.crt"
}
cert apiserver /CN=kube-apiserver \
  "subjectAltName=IP:$NODE_IP,IP:10.96.0.1,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost
extendedKeyUsage=serverAuth"
client_ext=extendedKeyUsage=clientAuth
cert admin "/O=system:masters/CN=admin" "$client_ext"
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client_ext"
cert kube-controller-manager /CN=system:kube-controller-manager "$client_ext"
cert kube-scheduler /CN=system:kube-scheduler "$client_ext"
cert kube-proxy /CN=system:kube-proxy "$client_ext"
cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "$client_ext"
openssl_q genrsa -out "$pki/sa.key" 2048
openssl_q rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub"

# kubeconfig NAME: DIR/NAME.kubeconfig with the client certificate NAME.
kubeconfig() {
  cat >"$DIR/$1.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: ir-node
  cluster:
    server: https://$NODE_IP:6443
    certificate-authority: $pki/ca.crt
users:
- name: $1
  user:
    client-certificate: $pki/$1.crt
    client-key: $pki/$1.key
contexts:
- name: ir-node
  context: {cluster: ir-node, user: $1}
current-context: ir-node
KC
}
for n in admin kube-controller-manager kube-scheduler kube-proxy kubelet; do kubeconfig "$n"; done
kc() { "$kubectl" --kubeconfig "$DIR/admin.kubeconfig" --cache-dir "$DIR/kubectl-cache" "$@"; }

# Cgroups: /$CGROUP/system for the cluster's processes; the kubelet makes /$CGROUP/kubepods.
for c in $V1_CONTROLLERS; do
  mkdir -p "/sys/fs/cgroup/$c/$CGROUP/system"
done
for g in "$CGROUP" "$CGROUP/system"; do  # a cpuset cgroup takes no process before it has CPUs
  cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$g/cpuset.cpus"
  cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$g/cpuset.mems"
done

sysctl -q -w net.ipv4.ip_forward=1

ip link add "$BRIDGE" type bridge
ip addr add "$NODE_IP/${POD_CIDR#*/}" dev "$BRIDGE"
ip link set "$BRIDGE" up

start etcd "$etcd" --name ir-node --data-dir "$DIR/etcd" \
  --listen-client-urls "http://$NODE_IP:2379" --advertise-client-urls "http://$NODE_IP:2379" \
  --listen-peer-urls "http://$NODE_IP:2380" --initial-advertise-peer-urls "http://$NODE_IP:2380" \
  --initial-cluster "ir-node=http://$NODE_IP:2380" --listen-metrics-urls "" \
  --unsafe-no-fsync --log-level warn
wait_for etcd 30 curl -sf "http://$NODE_IP:2379/health"

start kube-apiserver "$apiserver" \
  --etcd-servers="http://$NODE_IP:2379" \
  --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port=6443 \
  --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
  --client-ca-file="$pki/ca.crt" \
  --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types=InternalIP \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$pki/sa.pub" \
  --service-account-signing-key-file="$pki/sa.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --allow-privileged=true
wait_for kube-apiserver 60 kc get --raw /readyz

start kube-controller-manager "$controller_manager" \
  --kubeconfig="$DIR/kube-controller-manager.kubeconfig" \
  --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
  --use-service-account-credentials=true \
  --secure-port=0 --leader-elect=false
start kube-scheduler "$scheduler" --kubeconfig="$DIR/kube-scheduler.kubeconfig" \
  --secure-port=0 --leader-elect=false

cat >"$DIR/containerd/config.toml" <<TOML
version = 2
root = "$DIR/containerd/root"
state = "$DIR/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$DIR/containerd/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$DIR/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/instant-recovery/pause:1"
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$DIR/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$DIR/cni/net.d"
TOML
cat >"$DIR/cni/net.d/10-ir-node.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "ir-node",
  "plugins": [{
    "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {
      "type": "host-local", "dataDir": "$DIR/cni/networks",
      "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
      "routes": [{"dst": "0.0.0.0/0"}]
    }
  }]
}
JSON
socket=$DIR/containerd/containerd.sock

cat >"$DIR/kubelet/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP
containerRuntimeEndpoint: unix://$socket
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: AlwaysAllow}
clusterDomain: cluster.local
podLogsDir: $DIR/pod-logs
failSwapOn: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
YAML
# containerd and the kubelet share a mount namespace with shared propagation (see above); the
# images are in containerd before the kubelet starts.
start_containerd
scripts/node/images.sh "$socket" >/dev/null
for archive in "${@:2}"; do
  ctr --address "$socket" -n k8s.io images import "$archive" >/dev/null ||
    fail "importing $archive into containerd failed"
done
start_kubelet "$kubelet"

cat >"$DIR/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $DIR/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
bindAddress: $NODE_IP
healthzBindAddress: ""
metricsBindAddress: ""
iptables: {masqueradeAll: true, localhostNodePorts: false}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s, udpTimeout: 0s, udpStreamTimeout: 0s}
YAML
start kube-proxy "$proxy" --config="$DIR/kube-proxy.yaml"

wait_for "the Node $NODE_NAME" 60 kc get node "$NODE_NAME"
kc wait --for=condition=Ready "node/$NODE_NAME" --timeout=120s >/dev/null ||
  fail "the Node $NODE_NAME is not Ready after 120 s; see $DIR/logs/kubelet.log"
