# Sourced by scripts/build-control-plane.sh and scripts/node/build.sh (from the repository's
# root, after they define `fail`): builds binaries of k8s.io/kubernetes/cmd from the Go module
# of tools/k8s/apiserver, once, into $CACHE/bin/<name>-<version>.

CACHE=${IR_CACHE_DIR:-$HOME/.cache/instant-recovery}  # the rule of setup-test-deps.sh and e2e/src/s3.rs

k8s_version=$(awk '$1 == "k8s.io/kubernetes" {print $2}' tools/k8s/apiserver/go.mod)
[[ $k8s_version =~ ^v1\.([0-9]+)\.[0-9]+$ ]] ||
  fail "tools/k8s/apiserver/go.mod does not pin k8s.io/kubernetes to a v1.Y.Z release"
k8s_minor=${BASH_REMATCH[1]}

go_cmd() {
  local go
  go=$(command -v go || echo /usr/local/go/bin/go)
  [ -x "$go" ] || fail "Go >= 1.26 is needed to build the test cluster's binaries"
  echo "$go"
}

# The version that --version, /version and a Node's nodeInfo report, as Kubernetes'
# hack/lib/version.sh sets it.
k8s_ldflags="-s"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean"
done

# k8s_bin NAME: where NAME of this release is cached.
k8s_bin() {
  echo "$CACHE/bin/$1-$k8s_version"
}

# build_k8s NAME MINUTES: k8s.io/kubernetes/cmd/NAME into $(k8s_bin NAME), once. Static
# (CGO_ENABLED=0): nothing depends on the host's libc.
build_k8s() {
  local name=$1 minutes=$2 bin go
  bin=$(k8s_bin "$name")
  [ -x "$bin" ] && return 0
  go=$(go_cmd)
  echo "building $name $k8s_version with $("$go" version) (once, about $minutes minutes on 2 cores; cached in $CACHE/bin)" >&2
  mkdir -p "$CACHE/bin"
  (cd tools/k8s/apiserver && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=readonly "$go" build \
    -trimpath -ldflags="$k8s_ldflags" -o "$bin.tmp.$$" "k8s.io/kubernetes/cmd/$name") ||
    fail "building $name $k8s_version failed"
  mv "$bin.tmp.$$" "$bin"
}
