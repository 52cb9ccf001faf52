#!/usr/bin/env bash
# Tears down the single-node cluster that scripts/node/up.sh DIR started, also a half-started
# one, and leaves the machine as it was before up.sh:
#   - stops every process of the cluster: SIGTERM to those in DIR/run/*.pid (the kubelet and
#     kube-proxy first, so that nothing restarts containers or rewrites rules), then SIGKILL
#     to whatever still runs in the cluster's cgroups (containerd's shims and the containers:
#     they have no PID file but live under /$CGROUP). The mount namespace of containerd and
#     the kubelet, and all the mounts in it, go away with its last process;
#   - removes the cgroups /$CGROUP in every v1 hierarchy and in /sys/fs/cgroup/unified
#     (children first);
#   - deletes the iptables chains KUBE-* and CNI-* (IPv4 and IPv6, every table) and the
#     rules of the built-in chains that jump to them, then the nftables tables that were not
#     there before up.sh (iptables-nft makes the filter, nat, mangle tables on first use);
#   - deletes the bridge, restores the sysctls up.sh saved, removes the host directories
#     that did not exist before (/run/containerd, /run/netns, /var/lib/cni,
#     /var/log/containers).
# The files in DIR stay (logs, etcd's data); remove DIR afterwards. Exits 0 when everything
# is gone, 1 (and says what is left) otherwise. Usage: scripts/node/down.sh DIR (as root)
set -uo pipefail

fail() {
  echo "node/down: $*" >&2
  exit 1
}

[ $# -eq 1 ] || fail "usage: scripts/node/down.sh DIR"
[ "$(id -u)" = 0 ] || fail "must run as root"
DIR=$(cd "$1" 2>/dev/null && pwd) || fail "$1 does not exist"

BRIDGE=irnode0
CGROUP=ir-node
V1_CONTROLLERS="cpu cpuacct cpuset memory devices freezer blkio pids systemd"
CREATED=()
SAVED_SYSCTLS=()
NFT_TABLES=
# shellcheck disable=SC1091
[ -f "$DIR/host.env" ] && . "$DIR/host.env"
left=()

# 1. Processes.
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
pidof_file() { cat "$DIR/run/$1.pid" 2>/dev/null; }
for name in kubelet kube-proxy kube-scheduler kube-controller-manager containerd kube-apiserver etcd mountns; do
  pid=$(pidof_file "$name")
  alive "$pid" && kill -TERM "$pid"
  if [ "$name" = kubelet ] || [ "$name" = kube-apiserver ]; then
    for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
  fi
done
cgroup_pids() {
  [ -d "/sys/fs/cgroup/pids/$CGROUP" ] &&
    find "/sys/fs/cgroup/pids/$CGROUP" -name cgroup.procs -exec cat {} + 2>/dev/null
}
for _ in $(seq 100); do
  pids=$(cgroup_pids)
  [ -z "$pids" ] && break
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null
  sleep 0.1
done
for name in kubelet kube-proxy kube-scheduler kube-controller-manager containerd kube-apiserver etcd mountns; do
  pid=$(pidof_file "$name")
  alive "$pid" && kill -KILL "$pid" 2>/dev/null
done
sleep 0.2
pids=$(cgroup_pids)
[ -z "$pids" ] || left+=("processes $pids")

# 2. Cgroups, deepest first; runc also makes /$CGROUP in the cgroup2 hierarchy of this
# hybrid layout (/sys/fs/cgroup/unified), where nothing is controlled.
for c in $V1_CONTROLLERS unified; do
  root=/sys/fs/cgroup/$c/$CGROUP
  [ -d "$root" ] || continue
  for _ in $(seq 20); do
    find "$root" -depth -type d -exec rmdir {} + 2>/dev/null
    [ -d "$root" ] || break
    sleep 0.2
  done
  [ ! -d "$root" ] || left+=("cgroup $root")
done

# 3. iptables chains and rules, then the nftables tables up.sh's processes made.
for ipt in iptables ip6tables; do
  command -v "$ipt" >/dev/null || continue
  for table in filter nat mangle raw; do
    "$ipt" -t "$table" -S 2>/dev/null | grep -E '^-A [A-Z]+ .*-j (KUBE-|CNI-)' |
      grep -vE '^-A (KUBE-|CNI-)' | while read -r line; do
        # shellcheck disable=SC2086
        eval "$ipt -t $table ${line/#-A/-D}" 2>/dev/null
      done
    chains=$("$ipt" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(KUBE-|CNI-)/ {print $2}')
    for chain in $chains; do "$ipt" -t "$table" -F "$chain" 2>/dev/null; done
    for chain in $chains; do "$ipt" -t "$table" -X "$chain" 2>/dev/null; done
    if "$ipt" -t "$table" -S 2>/dev/null | grep -qE 'KUBE-|CNI-'; then
      left+=("$ipt -t $table rules")
    fi
  done
done
if command -v nft >/dev/null && [ -f "$DIR/host.env" ]; then
  nft list tables | while read -r _ family name; do
    case ",$NFT_TABLES," in *",table $family $name,"*) continue ;; esac
    nft delete table "$family" "$name" 2>/dev/null
  done
fi

# 4. Network, sysctls, host directories.
if ip link show "$BRIDGE" >/dev/null 2>&1; then
  ip link delete "$BRIDGE" || left+=("bridge $BRIDGE")
fi
for s in "${SAVED_SYSCTLS[@]}"; do
  sysctl -q -w "$s" >/dev/null || left+=("sysctl $s")
done
for p in "${CREATED[@]}"; do
  [ -e "$p" ] || continue
  grep -q " $p" /proc/mounts && umount -R "$p"/* 2>/dev/null
  rm -rf "$p" || left+=("$p")
done

[ ${#left[@]} -eq 0 ] || fail "left behind: ${left[*]}"
