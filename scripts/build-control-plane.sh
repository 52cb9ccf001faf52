#!/usr/bin/env bash
# Builds a real etcd, kube-apiserver and kube-controller-manager for the tests, once, from Go
# modules pinned in tools/k8s, and caches them outside the repository:
#   $IR_CACHE_DIR/bin/etcd-<version>                      (tools/k8s/etcd/go.mod)
#   $IR_CACHE_DIR/bin/kube-apiserver-<version>            (tools/k8s/apiserver/go.mod)
#   $IR_CACHE_DIR/bin/kube-controller-manager-<version>   (the same module)
# IR_CACHE_DIR defaults to $HOME/.cache/instant-recovery. Quick when the binaries already
# exist. Progress goes to stderr; stdout is exactly three lines, the etcd path, the
# kube-apiserver path, then the kube-controller-manager path. The tests run the controller
# manager's Job and garbage-collector controllers only: the operator's Backups run as Jobs.
#
# Versions: Kubernetes v1.37.2 (k8s-openapi feature v1_37), etcd v3.6.16. They are two
# modules because k8s.io/kubernetes v1.37 requires the etcd v3.7 client/server modules, which
# would override etcd v3.6's own dependency versions in a single module. tools/k8s/etcd only
# requires etcd's server module (its package go.etcd.io/etcd/server/v3 is the upstream
# `main` wrapper of etcdmain.Main). tools/k8s/apiserver requires k8s.io/kubernetes and
# replaces each staging module it requires at v0.0.0 (k8s.io/api, k8s.io/apiserver, ...,
# 31 of them) with the published v0.37.2; to move to another Kubernetes release, rebuild that
# list from the `v0.0.0` requirements in the go.mod of the new k8s.io/kubernetes version
# (`go mod download -json k8s.io/kubernetes@vX.Y.Z`, then read its GoMod file) and run
# `go mod tidy`. The version that kube-apiserver --version and /version report comes from
# -ldflags, as in Kubernetes' hack/lib/version.sh. All are built with CGO_ENABLED=0 (static,
# as the upstream release binaries are). The first build takes about 15 minutes on
# 2 cores (etcd about 2, kube-apiserver about 10, including module downloads, and
# kube-controller-manager about 3 more, as it shares most packages with the API server).
#
# The tests start them with ir_e2e::cluster::ControlPlane (e2e/src/cluster.rs), which makes the
# keys and certificates itself (rcgen, ECDSA P-256) and passes the flags below. By hand, on
# loopback ($ETCD_PORT, $ETCD_PEER_PORT and $PORT are free loopback ports, $TOKEN any random
# string, $D a fresh temp dir):
#   etcd --name test --data-dir "$D/etcd" \
#     --listen-client-urls http://127.0.0.1:$ETCD_PORT \
#     --advertise-client-urls http://127.0.0.1:$ETCD_PORT \
#     --listen-peer-urls http://127.0.0.1:$ETCD_PEER_PORT \
#     --initial-advertise-peer-urls http://127.0.0.1:$ETCD_PEER_PORT \
#     --initial-cluster test=http://127.0.0.1:$ETCD_PEER_PORT \
#     --unsafe-no-fsync --log-level warn &
#   # ready when `curl http://127.0.0.1:$ETCD_PORT/health` prints {"health":"true",...}
#   openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=test-ca \
#     -keyout "$D/ca.key" -out "$D/ca.crt"
#   openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver \
#     -keyout "$D/apiserver.key" -out "$D/apiserver.csr"
#   printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$D/ext"
#   openssl x509 -req -in "$D/apiserver.csr" -CA "$D/ca.crt" -CAkey "$D/ca.key" \
#     -CAcreateserial -days 3650 -extfile "$D/ext" -out "$D/apiserver.crt"
#   openssl genrsa -out "$D/sa.key" 2048
#   openssl rsa -in "$D/sa.key" -pubout -out "$D/sa.pub"
#   echo "$TOKEN,admin,admin,system:masters" >"$D/tokens.csv"
#   kube-apiserver \
#     --etcd-servers=http://127.0.0.1:$ETCD_PORT \
#     --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port=$PORT \
#     --tls-cert-file="$D/apiserver.crt" --tls-private-key-file="$D/apiserver.key" \
#     --client-ca-file="$D/ca.crt" \
#     --token-auth-file="$D/tokens.csv" \
#     --authorization-mode=RBAC \
#     --service-account-issuer=https://kubernetes.default.svc.cluster.local \
#     --service-account-key-file="$D/sa.pub" \
#     --service-account-signing-key-file="$D/sa.key" \
#     --service-cluster-ip-range=10.96.0.0/16 \
#     --endpoint-reconciler-type=none \
#     --allow-privileged=true \
#     --disable-admission-plugins=ServiceAccount,TaintNodesByCondition,StorageObjectInUseProtection &
#   curl --cacert "$D/ca.crt" -H "Authorization: Bearer $TOKEN" https://127.0.0.1:$PORT/readyz
#   curl --cacert "$D/ca.crt" -H "Authorization: Bearer $TOKEN" https://127.0.0.1:$PORT/version
# /readyz answers "ok" about 3 s after start (poll it; it is 500 or refused before). The admin
# user authenticates with the bearer token (group system:masters), or with a client cert
# signed by ca.crt with O=system:masters; anonymous requests get 403. Notes on the flags:
#   --endpoint-reconciler-type=none: the default reconciler refuses to start with a loopback
#     --advertise-address ("may not be in the loopback range").
#   --disable-admission-plugins: no kube-controller-manager runs, so nothing would undo what
#     these plugins expect a controller to undo. ServiceAccount: no namespace gets its
#     "default" ServiceAccount and every Pod create would be rejected (403 "error looking up
#     service account <ns>/default"). TaintNodesByCondition: a new Node would keep its
#     node.kubernetes.io/not-ready taint forever. StorageObjectInUseProtection: a deleted PVC
#     would keep its kubernetes.io/pvc-protection finalizer and never go away.
#   --allow-privileged=true: as in real clusters; without it the API server refuses any Pod
#     (or workload template) with a privileged container, such as a FUSE agent's DaemonSet.
#   --service-cluster-ip-range: without it the default 10.0.0.0/24 is used, with a warning.
#   No scheduler and no controllers in the tests that use this API server alone: they create,
#   read, update and delete objects. Tests that run Pods use the real node of
#   scripts/node/up.sh, which runs kube-controller-manager (built here) and the rest.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "build-control-plane: $*" >&2
  exit 1
}

# shellcheck source=scripts/lib/k8s-build.sh
. scripts/lib/k8s-build.sh

etcd_version=$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2}' tools/k8s/etcd/go.mod)
[ -n "$etcd_version" ] || fail "tools/k8s/etcd/go.mod does not pin go.etcd.io/etcd/server/v3"
etcd_bin=$CACHE/bin/etcd-$etcd_version

if [ ! -x "$etcd_bin" ]; then
  go=$(go_cmd)
  echo "building etcd $etcd_version with $("$go" version) (once, about 2 minutes; cached in $CACHE/bin)" >&2
  mkdir -p "$CACHE/bin"
  (cd tools/k8s/etcd && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=readonly "$go" build \
    -trimpath -ldflags=-s -o "$etcd_bin.tmp.$$" go.etcd.io/etcd/server/v3) ||
    fail "building etcd $etcd_version failed"
  mv "$etcd_bin.tmp.$$" "$etcd_bin"
fi

build_k8s kube-apiserver 10
build_k8s kube-controller-manager 3

echo "$etcd_bin"
k8s_bin kube-apiserver
k8s_bin kube-controller-manager
